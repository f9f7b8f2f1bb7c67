"""Generation metrics on hand-made examples whose scores are worked out by hand, and the loss masking."""

import math

import pytest
import sacrebleu

from tunelab.evaluation.metrics import direction, example_scores, generation_metrics, normalize_answer


def test_normalization_folds_case_punctuation_and_whitespace_only():
    assert normalize_answer("  Cat,  DOG!\n") == "cat dog"
    assert normalize_answer("It's 12.") == "it s 12"
    assert normalize_answer("cat dog") != normalize_answer("dog cat")  # word order still matters


def test_exact_and_normalized_match():
    s = example_scores("Cat dog.", "cat dog")
    assert s["exact_match"] == 0.0 and s["normalized_exact_match"] == 1.0
    s = example_scores(" 7\n", "7")
    assert s["exact_match"] == 1.0 and s["normalized_exact_match"] == 1.0
    assert example_scores("8", "7")["normalized_exact_match"] == 0.0


def test_rouge_l_by_hand():
    # LCS of "the cat on the mat" in "the cat sat on the mat" is 5 tokens: P = 5/5, R = 5/6, F1 = 10/11
    assert example_scores("the cat on the mat", "the cat sat on the mat")["rougeL"] == pytest.approx(10 / 11)
    assert example_scores("moon", "sun")["rougeL"] == 0.0


def test_bleu_by_hand():
    # n-gram precisions 5/6, 3/5, 2/4, 1/3 and equal lengths (no brevity penalty): BLEU = (1/12) ** (1/4)
    s = example_scores("the cat sat on a mat", "the cat sat on the mat")
    assert s["bleu"] == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-6)
    # a one-word answer is scored on unigrams only (effective order), not zeroed for lacking 4-grams
    assert example_scores("7", "7")["bleu"] == pytest.approx(100.0)


def test_chrf_by_hand():
    # character n-grams of "cat" vs "cab": orders 1-3 exist, precision = recall = (2/3 + 1/2 + 0) / 3 = 7/18
    assert example_scores("cat", "cab")["chrf"] == pytest.approx(100 * 7 / 18, abs=1e-6)
    assert example_scores("cat", "cat")["chrf"] == pytest.approx(100.0)


def test_aggregates_are_means_and_corpus_scores():
    answers, refs = ["7", "Cat dog.", "sun"], ["7", "cat dog", "moon"]
    m = generation_metrics(answers, refs)
    assert m["exact_match"] == pytest.approx(1 / 3)
    assert m["normalized_exact_match"] == pytest.approx(2 / 3)
    assert m["rougeL"] == pytest.approx(2 / 3)  # rouge-score's tokenizer drops case and punctuation
    assert m["answer_words"] == pytest.approx(4 / 3)
    assert 0 < m["chrf"] < 100
    perfect = generation_metrics(refs, refs)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)


def test_corpus_bleu_by_hand():
    # pooled n-grams: unigrams 2 of 3 match, the one bigram matches, no trigrams at all (so the orders
    # that exist count), equal lengths: BLEU = sqrt(2/3 * 1/1)
    m = generation_metrics(["cat dog", "sun"], ["cat dog", "moon"])
    assert m["bleu"] == pytest.approx(100 * (2 / 3) ** 0.5, abs=1e-6)
    # with 4-grams present it is sacrebleu's standard corpus BLEU
    answers, refs = ["the cat sat on a mat", "sun moon"], ["the cat sat on the mat", "sun moon"]
    assert generation_metrics(answers, refs)["bleu"] == pytest.approx(sacrebleu.corpus_bleu(answers, [refs]).score)


def test_empty_and_mismatched_inputs():
    assert generation_metrics([], []) == {}
    with pytest.raises(ValueError):
        generation_metrics(["a"], [])


def test_metric_directions():
    assert [
        direction(k)
        for k in (
            "exact_match",
            "samples_chrf",
            "eval/baseline/bleu",
            "loss",
            "eval_loss",
            "final_train_loss",
            "perplexity",
            "answer_words",
        )
    ] == [1, 1, 1, -1, -1, -1, -1, 0]


def test_response_loss_takes_only_response_tokens_and_ignores_padding(tiny_model_dir):
    """The eval loss equals the model's own loss with training's label mask, whatever the batch size."""
    import torch

    from tunelab.config.schema import DataConfig, ModelConfig, QuantizationConfig, RunConfig, SourceConfig
    from tunelab.data.prepare import TokenSpec, tokenize_rows
    from tunelab.data.sources import RawRows
    from tunelab.data.synthetic import generate
    from tunelab.evaluation.heldout import EvalRows
    from tunelab.evaluation.runner import response_loss
    from tunelab.model.loading import load_model, load_tokenizer

    cfg = RunConfig(model=ModelConfig(name=str(tiny_model_dir)), data=DataConfig(train=SourceConfig(path="x.jsonl")))
    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model, QuantizationConfig(), tok).eval()
    raw = RawRows(rows=generate(5, seed=1), where=[f"row {i}" for i in range(5)])
    rows = EvalRows(raw=raw, spec=TokenSpec.of(cfg), source="test", split="test")

    cols, _ = tokenize_rows(raw, TokenSpec.of(cfg), tok)
    total = count = 0.0
    with torch.no_grad():
        for ids, labels in zip(cols["input_ids"], cols["labels"], strict=True):
            n = sum(1 for y in labels[1:] if y != -100)
            assert 0 < n < len(ids) - 1  # the prompt is masked out, the answer is not
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
            total, count = total + out.loss.item() * n, count + n
    expected = total / count
    for batch_size in (1, 2, 5):
        got = response_loss(model, tok, rows, batch_size)
        assert got["loss"] == pytest.approx(expected, rel=1e-4)
        assert got["perplexity"] == pytest.approx(math.exp(expected), rel=1e-4)
