"""Document boundaries in packed training rows, as docs/data.md says: `training.packing: true` (TRL's
bfd, and bfd_split for data.too_long: split) keeps each document to itself (per-example attention);
`training.packing: blocks` (TRL's wrapped) lets a block's tokens attend across the EOS between
documents, as pre-training does. The rows are made by TRL's own packing and collator, as SFTTrainer
makes them, and run through the tiny model with the attention training uses."""

import json

import pytest
import torch

from tunelab.config.load import build_config
from tunelab.data.prepare import TokenSpec, load_splits, tokenize_rows


def documents(tmp_path, tokenizer, texts, **training):
    p = tmp_path / "docs.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = build_config(
        {
            "model": {"name": "tiny:llama-2l"},
            "data": {"train": {"path": str(p)}, "shuffle": False},
            "prompt": {"format": "text", "train_on": "all"},
            "training": training,
            "tracking": {"backend": "none"},
        }
    )
    cols, _ = tokenize_rows(load_splits(cfg)[0], TokenSpec.of(cfg), tokenizer)
    return cols


def rows_of(cols, strategy: str, length: int):
    """What SFTTrainer feeds the model for `strategy`: TRL's pack_dataset, then its collator."""
    from datasets import Dataset
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    packed = pack_dataset(Dataset.from_dict(cols), length, strategy)
    collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=strategy != "wrapped")
    return [collate([packed[i]]) for i in range(len(packed))]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from tunelab.model.attention import register

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=register()).eval()


def logits(model, batch):
    keys = [k for k in ("input_ids", "position_ids" if "position_ids" in batch else "attention_mask") if k in batch]
    with torch.no_grad():
        return model(**{k: batch[k] for k in keys}).logits[0]


A, A2, B = "cat dog sun moon", "fish bird star rain", "tree lake hill road book door"


def test_packed_documents_attend_only_to_themselves(tmp_path, tokenizer, model):
    rows = rows_of(documents(tmp_path, tokenizer, [B, A]), "bfd", 64)
    other = rows_of(documents(tmp_path, tokenizer, [B, A2]), "bfd", 64)  # the first document changed, same length
    assert len(rows) == 1 and rows[0]["position_ids"][0].tolist().count(0) == 2  # one row, two documents
    n = len(documents(tmp_path, tokenizer, [B])["input_ids"][0])  # B comes first (longest first)
    assert torch.allclose(logits(model, rows[0])[:n], logits(model, other[0])[:n])
    # B's tokens see only B: the packed row's logits for B are B's logits alone
    alone = logits(model, {"input_ids": torch.tensor([documents(tmp_path, tokenizer, [B])["input_ids"][0]])})
    assert torch.allclose(logits(model, rows[0])[:n], alone, atol=1e-5)
    # and the second document's do not depend on the first one's tokens either
    m = len(documents(tmp_path, tokenizer, [A])["input_ids"][0])
    alone_a = logits(model, {"input_ids": torch.tensor([documents(tmp_path, tokenizer, [A])["input_ids"][0]])})
    assert torch.allclose(logits(model, rows[0])[n : n + m], alone_a, atol=1e-5)


def test_blocks_attend_across_the_eos_between_documents(tmp_path, tokenizer, model):
    cols = documents(tmp_path, tokenizer, [A, B], packing="blocks", max_length=16)
    blocks = rows_of(cols, "wrapped", 16)
    stream = [t for b in blocks for t in b["input_ids"][0].tolist()]
    assert stream == cols["input_ids"][0] + cols["input_ids"][1]  # every token, in order, EOS between documents
    assert [b["input_ids"].shape[1] for b in blocks[:-1]] == [16] * (len(blocks) - 1)
    eos = stream.index(tokenizer.eos_token_id)
    assert eos < 15  # the first block holds the end of A, its EOS and the start of B
    changed = rows_of(documents(tmp_path, tokenizer, [A2, B], packing="blocks", max_length=16), "wrapped", 16)
    after = slice(eos + 1, 16)
    # B's first tokens see A: change A (same length) and their logits change
    assert not torch.allclose(logits(model, blocks[0])[after], logits(model, changed[0])[after], atol=1e-3)


def test_split_pieces_keep_every_token_and_attend_only_to_themselves(tmp_path, tokenizer, model):
    long = " ".join([B] * 6)
    cols = documents(tmp_path, tokenizer, [long], max_length=16)  # text splits by default: kept whole for TRL
    assert len(cols["input_ids"][0]) > 16
    p = tmp_path / "docs.jsonl"
    cfg = build_config(
        {
            "model": {"name": "tiny:llama-2l"},
            "data": {"train": {"path": str(p)}, "too_long": "split"},
            "prompt": {"format": "text", "train_on": "all"},
            "training": {"max_length": 16},
            "tracking": {"backend": "none"},
        }
    )
    whole, _ = tokenize_rows(load_splits(cfg)[0], TokenSpec.of(cfg), tokenizer)
    rows = rows_of(whole, "bfd_split", 16)
    tokens = sorted(t for r in rows for t in r["input_ids"][0].tolist())
    assert tokens == sorted(whole["input_ids"][0])  # nothing lost
    for r in rows:  # each row's pieces restart their positions
        starts = r["position_ids"][0].tolist().count(0)
        assert starts >= 1 and r["input_ids"].shape[1] <= 16
