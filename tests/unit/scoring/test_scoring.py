"""The scorer registry: every built-in scorer on hand-made answers, declarations and their errors,
eval.scorers in a config, `tunelab scorers`, and the declared scorers reaching metrics.jsonl and eval.json."""

import json
import sys

import pytest
from typer.testing import CliRunner

from conftest import base_config, read_jsonl, run_cli, write_cfg
from tunelab.errors import ConfigError
from tunelab.scoring import DEFAULT_SCORERS, REGISTRY, build_scorers, cli_scorers, config_scorers, merged, score_set

WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]


def score(declaration, answer, reference=None, row=None):
    (scorer,) = build_scorers([("test", declaration)])
    return scorer.score("prompt", answer, reference, row or {})


def problems(*declarations) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config_scorers(list(declarations))
    return e.value.problems


def test_every_kind_says_what_it_is():
    for kind in REGISTRY.values():
        assert kind.direction in (1, 0, -1) and kind.doc and "\n" not in kind.doc
    assert set(DEFAULT_SCORERS) <= set(REGISTRY)
    assert REGISTRY["length_penalty"].direction == -1 and REGISTRY["answer_words"].direction == 0


def test_reference_scorers_give_none_without_a_reference():
    for name in ("exact_match", "normalized_exact_match", "rougeL", "bleu", "chrf", "numeric"):
        assert score(name, "7", None) is None
    assert score("exact_match", " 7\n", "7") == 1.0
    assert score("answer_words", "one two three") == 3.0  # no reference needed


def test_numeric_tolerance_edges_and_math_forms():
    assert score("numeric", "The answer is 42.", "42") == 1.0
    assert score("numeric", "41", "42") == 0.0
    assert score({"numeric": {"tolerance": 0.5}}, "2.5", "2") == 1.0  # the edge counts as equal
    assert score({"numeric": {"tolerance": 0.5}}, "2.51", "2") == 0.0
    assert score({"numeric": 0.5}, "1.75", "2") == 1.0  # a bare value sets the tolerance
    assert score("numeric", "about 1,234 apples", "1234") == 1.0
    assert score("numeric", "$\\boxed{\\frac{1}{2}}$", "0.5") == 1.0  # math-verify
    assert score("numeric", "no idea", "42") == 0.0
    assert score("numeric", "42", "no number here") is None  # nothing to compare with


def test_numeric_off_the_main_thread():
    """math-verify's timeout is a signal, which only the main thread may set: elsewhere it runs without one."""
    import threading

    got = []
    worker = threading.Thread(target=lambda: got.append(score("numeric", "1/2", "0.5")))
    worker.start()
    worker.join()
    assert got == [1.0]


def test_regex_search_and_fullmatch():
    assert score({"regex": r"\d+"}, "it is 12 o'clock") == 1.0
    assert score({"regex": {"pattern": r"\d+", "mode": "fullmatch"}}, "it is 12") == 0.0
    assert score({"regex": {"pattern": r"\d+", "mode": "fullmatch"}}, " 12\n") == 1.0
    assert score({"regex": {"pattern": "yes", "ignore_case": True}}, "YES") == 1.0
    assert score({"regex": "yes"}, "YES") == 0.0


def test_json_and_schema():
    assert score("valid_json", '{"a": 1}') == 1.0
    assert score("valid_json", '```json\n{"a": 1}\n```') == 1.0
    assert score("valid_json", "{a: 1}") == 0.0
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert score({"json_schema": {"schema": schema}}, '{"a": 1}') == 1.0
    assert score({"json_schema": {"schema": schema}}, '{"a": "one"}') == 0.0  # schema mismatch
    assert score({"json_schema": {"schema": schema}}, "{a: 1}") == 0.0  # not JSON at all


def test_json_schema_from_a_file(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"type": "array", "items": {"type": "string"}}))
    assert score({"json_schema": str(path)}, '["x", "y"]') == 1.0
    assert score({"json_schema": str(path)}, "[1]") == 0.0
    (line,) = problems({"json_schema": str(tmp_path / "missing.json")})
    assert line.startswith("eval.scorers[0]: json_schema: schema ") and "cannot read it" in line
    (line,) = problems({"json_schema": {"schema": {"type": "bogus"}}})
    assert "not a valid JSON schema" in line


def test_tool_call_checks_the_offered_tools_and_argument_types():
    row = {"tools": WEATHER}
    hermes = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert score("tool_call", hermes, row=row) == 1.0
    assert score("tool_call", '{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}', row=row) == 1.0
    assert score("tool_call", '{"name": "get_weather", "arguments": {"city": 3}}', row=row) == 0.0  # wrong type
    assert score("tool_call", '{"name": "get_weather", "arguments": {}}', row=row) == 0.0  # required missing
    assert score("tool_call", '{"name": "send_mail", "arguments": {"to": "x"}}', row=row) == 0.0  # not offered
    assert score("tool_call", "It is sunny in Paris.", row=row) == 0.0  # no call
    assert score("tool_call", hermes, row={}) is None  # no tools offered: nothing to check against


def test_contains_not_contains_and_length_penalty():
    assert score({"contains": ["Paris", "France"]}, "Paris is in France") == 1.0
    assert score({"contains": ["Paris", "france"]}, "Paris is in France") == 0.5
    assert score({"contains": {"strings": ["PARIS"], "ignore_case": True}}, "paris") == 1.0
    assert score({"contains": "Paris"}, "Lyon") == 0.0  # one string is a list of one
    assert score({"not_contains": ["sorry", "cannot"]}, "Sure, here it is") == 1.0
    assert score({"not_contains": ["sorry", "cannot"]}, "Sorry, I cannot") == 0.5
    assert score({"length_penalty": 4}, "a b c d") == 0.0
    assert score({"length_penalty": 4}, "a b c d e f") == 0.5


def test_python_scorer_from_the_users_module(tmp_path, monkeypatch):
    (tmp_path / "my_checks.py").write_text(
        "def score(prompt, answer, reference, row):\n"
        "    return float(answer.upper() == reference.upper()) if reference else None\n"
        "def broken(prompt, answer, reference, row):\n"
        "    return 'yes'\n"
        "def nan(prompt, answer, reference, row):\n"
        "    return float('nan')\n"
        "THRESHOLD = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_checks", raising=False)
    (s,) = config_scorers([{"python": "my_checks:score"}])
    assert s.key == "score" and s.direction == 1
    assert s.score("p", "paris", "PARIS", {}) == 1.0 and s.score("p", "x", None, {}) is None
    (lower,) = config_scorers([{"python": {"function": "my_checks:score", "direction": -1, "name": "mine"}}])
    assert lower.key == "mine" and lower.direction == -1
    (broken,) = config_scorers([{"python": "my_checks:broken"}])
    with pytest.raises(Exception, match="returned 'yes'; a scorer returns a number"):
        broken.score("p", "a", "b", {})
    (nan,) = config_scorers([{"python": "my_checks:nan"}])
    with pytest.raises(Exception, match="returned nan"):
        nan.score("p", "a", "b", {})
    assert problems({"python": "no_such_module_xyz:score"}) == [
        "eval.scorers[0]: python: cannot import 'no_such_module_xyz': ModuleNotFoundError: "
        "No module named 'no_such_module_xyz'"
    ]
    assert problems({"python": "my_checks:missing"}) == ["eval.scorers[0]: python: module 'my_checks' has no 'missing'"]
    (line,) = problems({"python": "my_checks:THRESHOLD"})
    assert "is not a function" in line


def test_bad_declarations_are_one_line_each_naming_the_field():
    lines = problems(
        "exact_match",
        "exact_macth",
        {"numeric": {"tol": 1}},
        {"regex": "("},
        {"a": 1, "b": 2},
        "contains",
        {"exact_match": {"name": "exact_match"}},
        {"contains": {"strings": ["x"], "name": "has x"}},
    )
    assert len(lines) == 7 and all("\n" not in line for line in lines)
    assert lines[0].startswith("eval.scorers[1]: unknown scorer 'exact_macth'; did you mean 'exact_match'?")
    assert lines[1] == "eval.scorers[2]: numeric: unknown parameter 'tol' (parameters: name, tolerance)"
    assert lines[2].startswith("eval.scorers[3]: regex: pattern: not a regular expression")
    assert lines[3] == "eval.scorers[4]: a scorer is a name or a one-key mapping {name: parameters}"
    assert lines[4].startswith("eval.scorers[5]: contains: parameter 'strings' is required")
    assert lines[5].startswith("eval.scorers[6]: a second scorer reported as 'exact_match'")
    assert lines[6].startswith("eval.scorers[7]: contains: name: String should match pattern")


def test_cli_declarations_and_merging():
    contains, regex, numeric = cli_scorers(['contains:["Paris"]', r"regex:^\d+$", 'numeric:{"tolerance": 0.1}'])
    assert contains.params.strings == ["Paris"] and regex.params.pattern == r"^\d+$"
    assert numeric.params.tolerance == 0.1
    assert numeric.declaration() == {"numeric": {"name": None, "tolerance": 0.1}}  # what eval.json records
    with pytest.raises(ConfigError, match=r"--scorer nope: unknown scorer 'nope'"):
        cli_scorers(["nope"])
    chosen = merged(config_scorers(None), cli_scorers(["exact_match", 'contains:"x"']))
    assert [s.key for s in chosen] == [*[k for k in DEFAULT_SCORERS if k != "exact_match"], "exact_match", "contains"]


def test_aggregates_ignore_none_and_bleu_is_corpus_level():
    import sacrebleu

    scorers = config_scorers(["exact_match", "bleu", "tool_call"])
    answers, refs = ["the cat sat on a mat", "sun moon"], ["the cat sat on the mat", "sun moon"]
    rows = [{"tools": WEATHER}, {}]
    per_example, agg = score_set(scorers, ["p", "p"], answers, refs, rows)
    assert per_example[1]["tool_call"] is None and per_example[0]["tool_call"] == 0.0
    assert agg["exact_match"] == 0.5 and agg["tool_call"] == 0.0  # the mean of the one row it could score
    assert agg["bleu"] == pytest.approx(sacrebleu.corpus_bleu(answers, [refs]).score)
    _, none_scored = score_set(config_scorers(["tool_call"]), ["p"], ["a"], ["b"], [{}])
    assert none_scored == {}


def test_metric_directions_ask_the_registry():
    from tunelab.evaluation.metrics import direction

    assert direction("samples_length_penalty") == -1 and direction("eval/numeric") == 1
    assert direction("samples_valid_json") == 1 and direction("preference_accuracy") == 1


def test_eval_scorers_in_a_config(tmp_path):
    from tunelab.config import load_config

    cfg = base_config(tmp_path / "d.jsonl", tmp_path / "out")
    cfg["eval"] = {"scorers": ["exact_match", {"numeric": {"tolerance": 1e-6}}, {"contains": ["x"]}]}
    loaded = load_config(write_cfg(tmp_path, cfg))
    assert [s.key for s in config_scorers(loaded.eval.scorers)] == ["exact_match", "numeric", "contains"]
    assert load_config(write_cfg(tmp_path, {**cfg, "eval": {}}, "default.yaml")).eval.scorers is None
    with pytest.raises(ConfigError, match=r"eval\.scorers"):
        load_config(write_cfg(tmp_path, {**cfg, "eval": {"scorers": "exact_match"}}, "bad.yaml"))


def test_validate_reports_a_bad_scorer(tmp_path, synth_file):
    from tunelab.cli.main import app

    cfg = base_config(synth_file, tmp_path / "out", eval={"scorers": ["exact_match", {"numeric": {"tol": 1}}]})
    r = CliRunner().invoke(app, ["validate", str(write_cfg(tmp_path, cfg))], env={"COLUMNS": "200"})
    assert r.exit_code == 2, r.output
    assert "eval.scorers[1]: numeric: unknown parameter 'tol'" in r.output


def test_eval_refuses_a_bad_scorer_before_anything_loads(tmp_path):
    from tunelab.cli.main import app

    r = CliRunner().invoke(app, ["eval", str(tmp_path / "no-run"), "--scorer", "nope", "--scorer", "regex:("])
    assert r.exit_code == 2
    assert "--scorer nope: unknown scorer 'nope'" in r.output and "--scorer regex:(: regex: pattern:" in r.output


def test_scorers_command_lists_every_scorer():
    from tunelab.cli.main import app

    r = CliRunner().invoke(app, ["scorers"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert r.exit_code == 0, r.output
    rows = {line.split("│")[1].strip(): line for line in r.output.splitlines() if line.count("│") > 4}
    assert set(REGISTRY) <= set(rows)
    assert "lower" in rows["length_penalty"] and "needed" in rows["numeric"] and "tolerance=1e-06" in rows["numeric"]


@pytest.mark.slow
def test_declared_scorers_reach_metrics_jsonl_and_eval_json(tmp_path, synth_file):
    """A config scorer is logged as samples_<name> during training; `--scorer` adds one to eval.json."""
    cfg = base_config(
        synth_file,
        tmp_path / "out",
        eval={"scorers": ["exact_match", {"regex": {"pattern": r"\d", "name": "has_digit"}}]},
        output={"name": "r"},
        tracking={"backend": "none"},
    )
    cfg["training"].update(max_steps=2, save_steps=None)
    r = run_cli("train", str(write_cfg(tmp_path, cfg)), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "out" / "r"
    logged = [m for m in read_jsonl(run / "metrics.jsonl") if "samples_exact_match" in m]
    assert logged and all("samples_has_digit" in m and "samples_rougeL" not in m for m in logged)

    r = run_cli("eval", str(run), "--no-baseline", "--limit", "4", "--scorer", 'not_contains:["zzqx"]', timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((run / "eval.json").read_text())["models"]["target"]["metrics"]
    assert metrics["not_contains"] == 1.0 and "has_digit" in metrics and "rougeL" not in metrics
    assert "not_contains" in r.stdout  # the table shows a declared scorer's row
    declared = json.loads((run / "eval.json").read_text())["scorers"]
    assert declared["has_digit"] == {
        "regex": {"name": "has_digit", "pattern": r"\d", "mode": "search", "ignore_case": False}
    }
    sample = read_jsonl(run / "eval_samples.jsonl")[0]
    assert set(sample["scores"]["target"]) == {"exact_match", "has_digit", "not_contains"}
