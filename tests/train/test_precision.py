"""bf16 mixed precision: what stays fp32 stays fp32, lean layers stay exact, and a run trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lorakit.adapters import LoraConfig, add_adapter, set_trainable
from lorakit.errors import LorakitError
from lorakit.train.config import TrainConfig
from lorakit.train.lean import lean_layers
from lorakit.train.loss import IGNORE, chunked_cross_entropy, shift_labels
from lorakit.train.objective import causal_lm_loss
from lorakit.runtime.precision import autocast, native_bf16, resolve_precision
from lorakit.train.progress import read_metrics
from lorakit.train.run import run_training
from tests.conftest import tiny_model
from tests.train.conftest import write_dataset
from tests.train.test_run import _cfg, _losses

CPU = torch.device("cpu")


def _adapted(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = tiny_model("llama")
    add_adapter(model, LoraConfig(r=4, alpha=8, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if name.endswith("lora_B.weight"):
            torch.nn.init.normal_(p, std=0.1)  # B = 0 would hide the adapter path
    set_trainable(model, "default")
    return model.train()


def _step(model, batch, precision):
    with autocast(precision, CPU):
        loss, _ = causal_lm_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_precision_names_resolve_and_bad_ones_are_refused():
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("auto", CPU) == ("bf16" if native_bf16("cpu") else "fp32")
    with pytest.raises(LorakitError, match="--precision"):
        TrainConfig(precision="fp16")


def test_bf16_step_keeps_fp32_weights_and_gradients_and_is_close_to_fp32():
    model = _adapted()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "labels": shift_labels(ids)}
    loss32, grads32 = _step(model, batch, "fp32")
    loss16, grads16 = _step(model, batch, "bf16")
    assert loss16.dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in grads16.values())
    # measured on this tiny model: loss 1.7e-5 relative, gradients' cosine 0.99998
    torch.testing.assert_close(loss16, loss32, rtol=2e-4, atol=0)
    flat32 = torch.cat([g.flatten() for g in grads32.values()])
    flat16 = torch.cat([g.flatten() for g in grads16.values()])
    assert F.cosine_similarity(flat16, flat32, dim=0) > 0.9999
    for name, p in model.named_parameters():  # autocast casts copies; the frozen weights are untouched
        if not p.requires_grad:
            assert p.dtype == torch.float32 and torch.equal(p, before[name]), name


def test_lean_layers_stay_bitwise_equal_under_bf16():
    """Recipes recompute in backward, outside the forward's autocast; what they redo (norms, SwiGLU)
    has no autocast-listed op, so the values must still be the forward's, bit for bit."""
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(2))
    batch = {"input_ids": ids, "labels": shift_labels(ids)}
    plain, lean = _adapted(), _adapted()
    lean_layers(lean)
    loss_ref, grads_ref = _step(plain, batch, "bf16")
    loss, grads = _step(lean, batch, "bf16")
    assert torch.equal(loss, loss_ref)
    for name in grads_ref:
        assert torch.equal(grads[name], grads_ref[name]), name


def test_frozen_weights_stored_in_bf16_give_bitwise_the_autocast_step():
    """Autocast casts fp32 weights to bf16 per use; holding them in bf16 feeds the GEMMs the same bits."""
    from lorakit.train.fuse import fuse_projections
    from lorakit.train.speed import store_frozen

    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(4))
    batch = {"input_ids": ids, "labels": shift_labels(ids)}
    cast, stored = _adapted(), _adapted()
    for model in (cast, stored):
        fuse_projections(model)
    loss_ref, grads_ref = _step(cast, batch, "bf16")
    # 2 layers: fused q/k/v and gate/up, o_proj and down_proj
    assert store_frozen(stored, torch.bfloat16) == 2 * 4
    loss, grads = _step(stored, batch, "bf16")
    assert torch.equal(loss, loss_ref)
    for name in grads_ref:
        assert torch.equal(grads[name], grads_ref[name]), name
    kept = {id(stored.get_input_embeddings().weight), id(stored.get_output_embeddings().weight)}
    for p in stored.parameters():  # trained factors, norms, embedding and head stay fp32
        if p.requires_grad or p.ndim == 1 or id(p) in kept:
            assert p.dtype == torch.float32
        else:
            assert p.dtype == torch.bfloat16


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("compiled", [False, True])  # --compile: softmax and gradient as one compiled kernel
def test_chunked_loss_under_bf16_matches_cross_entropy_of_bf16_logits(compiled, softcap):
    torch.manual_seed(3)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(2, 7, 16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 7))
    labels[0, :3] = IGNORE
    with autocast("bf16", CPU):
        with torch.no_grad():  # evaluation: the loss alone
            loss_only, _ = chunked_cross_entropy(hidden, head, labels, chunk=4, softcap=softcap, compiled=compiled)
        total, n = chunked_cross_entropy(hidden, head, labels, chunk=4, softcap=softcap, compiled=compiled)
    total.backward()
    got = hidden.grad.clone()
    hidden.grad = None
    logits = F.linear(hidden.bfloat16(), head.weight.bfloat16()).float()  # what the chunks compute
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    ref = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    ref.backward()
    assert n == int((labels != IGNORE).sum())
    torch.testing.assert_close(total, ref, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(loss_only, total, rtol=1e-6, atol=0)
    torch.testing.assert_close(got, hidden.grad)  # measured: equal


def test_bf16_loss_follows_a_frozen_head_changed_in_place():
    """The bf16 copy of a frozen head is reused between steps, but never once the head has changed."""
    torch.manual_seed(4)
    head = torch.nn.Linear(16, 50, bias=False).requires_grad_(False)
    hidden = torch.randn(2, 7, 16)
    labels = torch.randint(0, 50, (2, 7))

    def loss() -> float:
        with autocast("bf16", CPU):
            return chunked_cross_entropy(hidden, head, labels)[0].item()

    before = loss()
    assert loss() == before
    with torch.no_grad():
        head.weight.mul_(1.5)  # e.g. an adapter merged into it
    fresh = torch.nn.Linear(16, 50, bias=False).requires_grad_(False)
    fresh.weight.data = head.weight.detach().clone()
    with autocast("bf16", CPU):
        expected = chunked_cross_entropy(hidden, fresh, labels)[0].item()
    assert loss() == expected != before


def test_a_bf16_run_trains_and_records_its_precision(tiny_model_dir, dataset, tmp_path):
    common = dict(max_steps=6, packing=True, mask_prompt=True, max_seq_len=128)
    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    run_training(_cfg(tiny_model_dir, dataset, fp32, **common))
    summary = run_training(_cfg(tiny_model_dir, dataset, bf16, precision="bf16", **common))
    assert summary["precision"] == "bf16"
    a, b = _losses(fp32), _losses(bf16)
    assert b[-1] < b[0]
    assert a != b  # bf16 really ran; measured gap 4.6e-6 relative on this tiny model
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-4, atol=0)
    evals = [r for r in read_metrics(bf16 / "metrics.jsonl") if "eval_loss" in r]
    assert evals and all(torch.isfinite(torch.tensor(r["eval_loss"])) for r in evals)
    from safetensors.torch import load_file

    saved = load_file(bf16 / "adapter_model.safetensors")  # the base was held in bf16; the adapter is fp32
    assert saved and all(t.dtype == torch.float32 for t in saved.values())


def test_a_compiled_bf16_run_recomputes_eager_attention_and_trains_the_same_curve(tiny_model_dir, tmp_path):
    """`--precision bf16 --compile` is the fast path: compiled layers, eager attention recomputed in
    backward (picked when --attention is not given), the compiled loss kernel. It trains the curve of
    the plain bf16 run (sdpa, eager loss) up to bf16 rounding in a different order of operations.

    Samples of one length make every batch one shape, so each graph compiles once (a CI machine
    starts with an empty compile cache); rows whose length changes, and the recompiles that brings,
    are the fp32 twin's case (tests/train/test_run.py::test_compiled_layers_train_like_eager_ones)."""
    dataset = write_dataset(tmp_path / "data", n_train=16, n_valid=4, min_len=48, max_len=48)
    common = dict(max_steps=4, packing=False, mask_prompt=True, max_seq_len=128, precision="bf16", eval_every=4)
    plain = run_training(_cfg(tiny_model_dir, dataset, tmp_path / "plain", **common))
    fast = run_training(_cfg(tiny_model_dir, dataset, tmp_path / "fast", compile=True, **common))
    assert plain["attention"] == "sdpa" and fast["attention"] == "eager_recompute"
    a, b = _losses(tmp_path / "plain"), _losses(tmp_path / "fast")
    assert b[-1] < b[0]
    assert a != b  # a different path really ran; measured gap 3.2e-6 relative
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-4, atol=0)


@pytest.mark.parametrize("method", ["dora", "qlora", "full", "head"])
def test_every_method_trains_in_bf16_and_saves_fp32_weights(tiny_model_dir, dataset, tmp_path, method):
    """bf16 is autocast only: what a run saves (adapter or model) keeps its fp32 dtype."""
    from safetensors.torch import load_file

    out = tmp_path / method
    summary = run_training(_cfg(tiny_model_dir, dataset, out, method=method, precision="bf16", max_steps=3))
    assert summary["steps"] == 3 and summary["precision"] == "bf16"
    losses = _losses(out)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    saved = load_file(out / ("model.safetensors" if method in ("full", "head") else "adapter_model.safetensors"))
    assert saved and all(t.dtype == torch.float32 for t in saved.values())


@pytest.mark.parametrize("faster", [False, True])
def test_auto_takes_int8_for_training_only_where_this_machine_measured_it_faster(tmp_path, monkeypatch, faster):
    """Without native bf16, `auto` follows the machine's cached int8 answer for callers that can run int8,
    and never gives int8 to those that cannot (inference, full fine-tuning)."""
    import json

    from lorakit.runtime import precision
    from lorakit.runtime.cache import machine_key

    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path))
    (tmp_path / "machine.json").write_text(json.dumps({machine_key(): {"cpu_bf16_native": False,
                                                                        "cpu_int8_faster": faster}}))
    precision.native_bf16.cache_clear()
    precision.int8_faster.cache_clear()
    try:
        assert resolve_precision("auto", CPU, int8=True) == ("int8" if faster else "fp32")
        assert resolve_precision("auto", CPU) == "fp32"
    finally:
        precision.native_bf16.cache_clear()
        precision.int8_faster.cache_clear()


def test_the_int8_probe_measures_a_ratio():
    from lorakit.runtime.int8_kernel import available, int8_speedup

    ratio = int8_speedup(rounds=1)
    assert (ratio > 0) is available()
