"""Model-side invariants: packing isolation, QLoRA gradients on AVX512-BF16 CPUs, parameter counts."""

import copy

import pytest
import torch

from tunelab.config.schema import AdapterConfig, ModelConfig, QuantizationConfig
from tunelab.model.adapters import apply_adapter, parameter_report
from tunelab.model.loading import keep_bnb_training_layout, load_model, load_tokenizer


def _model(tiny_model_dir, bits=None, attn=None):
    mcfg = ModelConfig(name=str(tiny_model_dir), attn_implementation=attn)
    tok = load_tokenizer(mcfg)
    return load_model(mcfg, QuantizationConfig(bits=bits), tok), tok


@pytest.mark.parametrize("attn", ["tunelab_packed_sdpa", "sdpa", "eager"])
def test_packed_logits_equal_unpacked(tiny_model_dir, attn):
    """TRL's padding-free packing (position ids restart per example) must not let examples attend to each other."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model, tok = _model(tiny_model_dir, attn=attn)
    model.eval()
    texts = ["Reverse the order of the words.\ncat dog sun", "What is 3 plus 4?\n7", "Sort the digits.\n3 1 2 9 8"]
    examples = [{"input_ids": tok(t).input_ids} for t in texts]
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(examples)
    assert batch["input_ids"].shape[0] == 1 and "position_ids" in batch
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        start = 0
        for ex in examples:
            n = len(ex["input_ids"])
            alone = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0]
            torch.testing.assert_close(packed[start : start + n], alone, atol=1e-4, rtol=1e-4)
            start += n
        if attn == "tunelab_packed_sdpa":  # gradients agree with the reference kernel too
            _packed_grads_match_sdpa(tiny_model_dir, batch)
        # the same tokens without position ids (plain concatenation) do leak across examples
        leaky = model(input_ids=batch["input_ids"]).logits[0]
        n0 = len(examples[0]["input_ids"])
        assert not torch.allclose(leaky[n0 : n0 + 3], packed[n0 : n0 + 3], atol=1e-3)


def _packed_grads_match_sdpa(tiny_model_dir, batch):
    grads = []
    for attn in ("tunelab_packed_sdpa", "sdpa"):
        model, _ = _model(tiny_model_dir, attn=attn)
        with torch.enable_grad():
            model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"]
            ).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4)


def _lora_grads(model, batch):
    model.zero_grad(set_to_none=True)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _qlora(tiny_model_dir, fix: bool):
    model, tok = _model(tiny_model_dir, bits=4)
    model = apply_adapter(
        model,
        AdapterConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj"]),
        quantized=True,
        gradient_checkpointing=False,
    )
    torch.manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_B" in n:  # non-zero B so that gradients reach A as well
            torch.nn.init.normal_(p, std=0.02)
    if fix:
        keep_bnb_training_layout(model)
    else:
        import bitsandbytes as bnb

        for m in model.modules():
            if isinstance(m, bnb.nn.Linear4bit):
                m.support_avx512bf16_for_cpu = True
    return model, tok


def test_qlora_gradients_after_an_eval_step_equal_a_fresh_models(tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import has_avx512bf16

    fresh, tok = _qlora(tiny_model_dir, fix=True)
    batch = tok(
        ["Sort the words alphabetically.\nsun cat dog", "What is 2 plus 5?\n7"], return_tensors="pt", padding=True
    )
    batch = dict(batch)
    expected = _lora_grads(fresh, batch)
    assert expected and all(g.abs().sum() > 0 for g in expected.values())

    evaluated = copy.deepcopy(fresh)
    evaluated.eval()
    with torch.no_grad():
        evaluated(**batch)  # an eval step / generation: no-grad forward
    evaluated.train()
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _lora_grads(evaluated, batch)
    # with the workaround no backward pass goes through bitsandbytes' inference kernel (gemv_4bit,
    # which has no autograd): the training layout's MatMul4Bit carries every gradient
    assert not [w for w in caught if "gemv_4bit" in str(w.message)]
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g, atol=1e-5, rtol=1e-4, msg=f"LoRA gradient differs for {name}")

    if has_avx512bf16():
        # Without the workaround the same sequence gives wrong gradients on this CPU: the trap is real.
        # The repacked layers then backprop through gemv_4bit, which torch warns about: that warning is
        # the symptom this test shows, expected here and nowhere else.
        broken, _ = _qlora(tiny_model_dir, fix=False)
        broken.eval()
        with torch.no_grad():
            broken(**batch)
        broken.train()
        with pytest.warns(UserWarning, match="gemv_4bit"):
            bad = _lora_grads(broken, batch)
        worst = max(((bad[n] - g).norm() / g.norm()).item() for n, g in expected.items())
        assert worst > 0.05


def test_parameter_report_counts_4bit_weights_at_true_size(tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    full, _ = _model(tiny_model_dir)
    n_full = sum(p.numel() for p in full.parameters())
    q, _ = _model(tiny_model_dir, bits=4)
    assert sum(p.numel() for p in q.parameters()) < n_full  # packed storage reports fewer elements...
    assert parameter_report(q)["total"] == n_full  # ...the report counts the real weights
    lora = apply_adapter(
        q, AdapterConfig(r=4, target_modules=["q_proj", "v_proj"]), quantized=True, gradient_checkpointing=False
    )
    rep = parameter_report(lora)
    cfg = full.config
    per_layer = 2 * 4 * (cfg.hidden_size + cfg.hidden_size)  # q and v: A (r x h) + B (h x r), h=hidden (MHA)
    assert rep["trainable"] == per_layer * cfg.num_hidden_layers
    assert rep["total"] == n_full + rep["trainable"]
    assert rep["trainable_pct"] == pytest.approx(100 * rep["trainable"] / rep["total"], abs=1e-3)


def test_full_finetune_layer_freezing(tiny_model_dir):
    model, _ = _model(tiny_model_dir)
    model = apply_adapter(
        model,
        AdapterConfig(type="none", freeze={"first_n_layers": 1, "embeddings": True}),
        quantized=False,
        gradient_checkpointing=False,
    )
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("model.layers.0.") for n in frozen) and not any(
        n.startswith("model.layers.1.") for n in frozen
    )
    assert "model.embed_tokens.weight" in frozen
    rep = parameter_report(model)
    assert rep["trainable"] == sum(p.numel() for n, p in model.named_parameters() if n not in frozen)


def test_model_folder_without_weights_is_a_user_error(tmp_path, tiny_model_dir):
    import shutil

    from tunelab.errors import TunelabError
    from tunelab.model.resolve import resolve_model_path

    shutil.copytree(tiny_model_dir, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(TunelabError, match="holds no \\*.safetensors weights"):
        resolve_model_path(str(tmp_path / "m"))
    with pytest.raises(TunelabError, match="no config.json"):
        resolve_model_path(str(tmp_path))


@pytest.mark.parametrize("chunk_tokens", [None, 7])  # one chunk; chunks of 7 tokens, recomputed in backward
def test_direct_lm_head_equals_trls_fused_head(tiny_model_dir, chunk_tokens):
    """The CPU loss path (one log-softmax) gives TRL's fused-head outputs, loss and LoRA gradients."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    from trl.trainer.utils import add_fused_lm_head

    from tunelab.model.lm_head import MAX_CHUNK_BYTES, use_direct_lm_head

    texts = ["Reverse the order of the words.\ncat dog sun", "What is 3 plus 4?\n7", "Sort the digits.\n3 1 2 9 8"]
    runs = []
    for direct in (False, True):
        model, tok = _model(tiny_model_dir)
        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does
        torch.manual_seed(0)
        model = apply_adapter(
            model,
            AdapterConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
            quantized=False,
            gradient_checkpointing=False,
        )
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02)
        examples = [{"input_ids": tok(t).input_ids} for t in texts]
        batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(examples)
        batch["labels"][0, :5] = -100  # some prompt tokens without a label
        if direct:
            chunk_bytes = chunk_tokens * model.config.vocab_size * 4 if chunk_tokens else MAX_CHUNK_BYTES
            if chunk_tokens:
                assert int((batch["labels"][:, 1:] != -100).sum()) > 3 * chunk_tokens  # several chunks really run
            assert use_direct_lm_head(model, chunk_bytes)
        out = model(**batch, fused_lm_head=True, num_items_in_batch=int((batch["labels"] != -100).sum()))
        out.loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        runs.append((out, grads))
        plain = model(input_ids=batch["input_ids"][:, :4])  # without fused_lm_head: the model's own logits
        assert plain.logits.shape[-1] == model.config.vocab_size
    (ref, ref_g), (got, got_g) = runs
    assert ref.loss.item() > 0
    torch.testing.assert_close(got.loss, ref.loss, atol=1e-5, rtol=1e-5)
    for field in ("log_probs", "entropy", "label_mask"):
        torch.testing.assert_close(getattr(got, field), getattr(ref, field), atol=1e-5, rtol=1e-5)
    assert torch.equal(got.is_top1, ref.is_top1)
    assert ref_g.keys() == got_g.keys() and ref_g
    for n in ref_g:
        torch.testing.assert_close(got_g[n], ref_g[n], atol=1e-6, rtol=1e-4)


def test_direct_lm_head_leaves_models_with_logit_transforms_to_trl(tiny_model_dir):
    from trl.trainer.utils import add_fused_lm_head

    from tunelab.model.lm_head import use_direct_lm_head

    model, _ = _model(tiny_model_dir)
    add_fused_lm_head(model)
    model.config.final_logit_softcapping = 30.0
    assert not use_direct_lm_head(model)


@pytest.mark.parametrize("bits", [4, None])
def test_generation_weights_give_the_same_outputs(tiny_model_dir, bits):
    """Dense, LoRA-merged weights for generation: same logits and answers, adapters on or off, nothing left patched."""
    from tunelab.inference.generate import GenerationSettings, generate_batch, generate_one
    from tunelab.model.dense import generation_weight_bytes, generation_weights

    if bits:
        model, tok = _qlora(tiny_model_dir, fix=True)
    else:
        model, tok = _model(tiny_model_dir)
        model = apply_adapter(
            model,
            AdapterConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
            quantized=False,
            gradient_checkpointing=False,
        )
        torch.manual_seed(0)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.05)
    model.eval()
    assert generation_weight_bytes(model) > 0
    batch = tok(
        ["Sort the words alphabetically.\nsun cat dog", "What is 2 plus 5?\n7"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        tuned = model(**batch).logits
        with model.disable_adapter():
            base = model(**batch).logits
        assert (tuned - base).abs().max() > 1e-3  # the adapter matters, so merging it is tested
        with generation_weights(model):
            torch.testing.assert_close(model(**batch).logits, tuned, atol=2e-5, rtol=1e-4)
            with model.disable_adapter():
                torch.testing.assert_close(model(**batch).logits, base, atol=2e-5, rtol=1e-4)
    assert not any("forward" in vars(m) for m in model.modules())
    settings = GenerationSettings(max_new_tokens=12)
    prompts = ["Reverse the order of the words.\ncat dog sun\n", "What is 3 plus 4?\n"]
    assert generate_batch(model, tok, prompts, settings, dense_weights=True) == generate_batch(
        model, tok, prompts, settings, dense_weights=False
    )
    ids = tok(prompts[0]).input_ids
    assert generate_one(model, tok, ids, settings, dense_weights=True) == generate_one(
        model, tok, ids, settings, dense_weights=False
    )
    model.train()
    with torch.enable_grad(), generation_weights(model):  # with gradients the layers take PEFT's own path
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)


def test_training_kernels_resolve_to_liger_only_where_it_runs(monkeypatch, tiny_model_dir):
    """auto: Liger on CUDA with the package and a covered architecture, nothing elsewhere; liger: insists,
    and says why it cannot in one line naming the field; the patch is Liger's own per-architecture function."""
    from tunelab.errors import ConfigError
    from tunelab.model import kernels as k

    monkeypatch.setattr(k, "_liger_functions", lambda: None)
    assert k.resolve_kernels("auto", "cpu", "llama").name == "none"
    assert k.resolve_kernels("none", "cuda:0", "llama").name == "none"
    with pytest.raises(ConfigError, match=r"training\.kernels: liger: Liger's kernels are Triton, which needs a CUDA"):
        k.resolve_kernels("liger", "cpu", "llama")
    with pytest.raises(ConfigError, match="liger-kernel package is not installed"):
        k.resolve_kernels("liger", "cuda:0", "llama")

    calls = []
    monkeypatch.setattr(k, "_liger_functions", lambda: {"llama": lambda **kw: calls.append(kw)})
    assert k.resolve_kernels("auto", "cuda:0", "llama").name == "liger"
    assert k.resolve_kernels("auto", "cuda:0", None).name == "liger"  # before the model's config is read
    assert k.resolve_kernels("auto", "cuda:0", "mamba").name == "none"
    with pytest.raises(ConfigError, match="no kernels for model_type 'mamba'"):
        k.resolve_kernels("liger", "cuda:0", "mamba")
    assert k.resolve_kernels("auto", "cpu", "llama").name == "none"  # never on the CPU

    model, _ = _model(tiny_model_dir)
    k.apply_kernels(model, k.resolve_kernels("none", "cuda:0", "llama"))
    assert calls == []
    k.apply_kernels(model, k.resolve_kernels("liger", "cuda:0", "llama"))
    assert calls == [{"model": model, **k.LIGER_PARTS}]
