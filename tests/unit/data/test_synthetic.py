from tunelab.data.synthetic import TASKS, generate


def test_seeded_and_unique():
    a, b = generate(500, seed=4), generate(500, seed=4)
    assert a == b and a != generate(500, seed=5)
    assert len({(r["instruction"], r["input"]) for r in a}) == 500


def test_answers_are_exact():
    for r in generate(400, seed=1):
        ins, inp, out = r["instruction"], r["input"], r["output"]
        words = inp.split()
        if ins.startswith("Reverse"):
            assert out.split() == words[::-1]
        elif ins.startswith("Sort the words"):
            assert out.split() == sorted(words)
        elif ins.startswith("Sort the digits"):
            assert out.split() == sorted(words) and all(w.isdigit() for w in words)
        elif ins.startswith("Write the words in upper"):
            assert out == inp.upper()
        elif ins.startswith("What is"):
            a, b = ins.removeprefix("What is ").removesuffix("?").split(" plus ")
            assert out == str(int(a) + int(b)) and inp == ""
        elif ins.startswith("How many"):
            assert out == str(len(words))
        elif ins.startswith("Which word"):
            assert out == words[0]
        else:
            _, _, _, word, n, _ = ins.split()
            assert out == " ".join([word] * int(n)) and inp == ""


def test_both_variants_and_all_kinds_present():
    rows = generate(len(TASKS) * 5, seed=0)
    assert any(r["input"] for r in rows) and any(not r["input"] for r in rows)
    assert len({r["instruction"].split()[0] for r in rows}) >= 5
