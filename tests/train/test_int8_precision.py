"""`--precision int8`: frozen projections run int8 GEMMs while training, the run learns like fp32,
and everything saved or merged afterwards sees the original modules."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lorakit.errors import LorakitError
from lorakit.plan.speed import resolve_speed
from lorakit.quant.int8mm import Int8MMLinear
from lorakit.runtime import int8_kernel
from lorakit.train.config import TrainConfig
from lorakit.train.progress import read_metrics
from lorakit.train.run import run_training
from lorakit.train.int8_groups import Int8Slice, int8_projections
from tests.train.conftest import write_dataset

pytestmark = pytest.mark.skipif(not int8_kernel.available(), reason="this PyTorch has no CPU int8 kernel")


def _cfg(model_dir, data, out, **kw) -> TrainConfig:
    base = dict(model=str(model_dir), data=str(data), out=str(out), batch_size=4, max_steps=12, lr=5e-3,
                warmup=0, seed=0, progress=False, threads=1, dropout=0.0)
    return TrainConfig(**{**base, **kw})


def _losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


def test_int8_tracks_fp32_and_saves_the_same_kind_of_adapter(tiny_model_dir, tmp_path):
    """Same batches, same init: int8's loss curve stays within the issue's 1% of fp32's at every
    step (the frozen GEMMs' error is well under that: tests/quant/test_int8mm.py bounds it), and it
    writes an adapter of the same keys and shapes, finite, that differs from fp32's (int8 really ran)."""
    data = write_dataset(tmp_path / "data")
    runs = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / precision
        summary = run_training(_cfg(tiny_model_dir, data, out, precision=precision))
        assert summary["speed_plan"]["precision"] == precision
        runs[precision] = (_losses(out), load_file(out / "adapter_model.safetensors"))
    (l32, a32), (l8, a8) = runs["fp32"], runs["int8"]
    assert len(l8) == len(l32) == 12 and all(math.isfinite(x) for x in l8)
    assert all(abs(x - y) <= 0.01 * y for x, y in zip(l8, l32)), (l8, l32)
    assert a8.keys() == a32.keys() and all(a8[k].shape == a32[k].shape for k in a8)
    assert all(torch.isfinite(a8[k]).all() for k in a8)
    assert any(not torch.equal(a8[k], a32[k]) for k in a8)


@pytest.mark.parametrize("group", [False, True])
def test_int8_swaps_only_frozen_linears_and_undo_restores_them(tiny_model_dir, group):
    from lorakit.adapters import LoraConfig, add_adapter
    from lorakit.models import load_model
    from lorakit.train.fuse import base_of

    model, _ = load_model(tiny_model_dir, with_tokenizer=False)
    add_adapter(model, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    before = {n: m for n, m in model.named_modules()}
    undo = int8_projections(model, group=group)
    frozen = {n for n, m in before.items() if type(m) is nn.Linear and not m.weight.requires_grad
              and m is not model.get_output_embeddings()}
    now = dict(model.named_modules())
    singles = {n for n, m in now.items() if isinstance(m, Int8MMLinear) and not n.endswith(".linear")}
    slices = {n for n, m in now.items() if isinstance(m, Int8Slice)}
    assert singles | slices == frozen and frozen
    assert bool(slices) is group  # the tiny llama's q/k/v and gate/up form groups
    assert not any(isinstance(m, nn.Linear) and not m.weight.requires_grad for n, m in now.items()
                   if n in frozen)
    assert all(p.requires_grad is False for n in frozen for p in model.get_submodule(n).parameters())
    ids = torch.randint(0, 100, (2, 16))
    model(ids).logits.sum().backward()  # gradients flow through int8 layers to the adapters
    undo()
    assert all(model.get_submodule(n) is before[n] for n in frozen)
    assert not any(isinstance(base_of(m), (Int8Slice, Int8MMLinear)) for m in model.modules())


def test_grouped_int8_computes_what_one_gemm_per_projection_does(tiny_model_dir):
    """A group's forward prepares the shared input once, so it matches the members' own int8 GEMMs up
    to float summation order; its input gradient quantizes the members' gradients jointly, so it
    stays within int8's error of the per-projection one (both are compared with fp32)."""
    from lorakit.adapters import LoraConfig, add_adapter, set_trainable
    from lorakit.models import load_model

    ids = torch.randint(0, 100, (2, 24), generator=torch.Generator().manual_seed(0))
    results = {}
    for mode in ("fp32", "single", "group"):
        torch.manual_seed(0)
        model, _ = load_model(tiny_model_dir, with_tokenizer=False)
        add_adapter(model, LoraConfig(r=4, alpha=8, target_modules="all-linear"))
        set_trainable(model, "default")
        undo = int8_projections(model, group=mode == "group") if mode != "fp32" else (lambda: None)
        logits = model(ids).logits
        logits.square().mean().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[mode] = (logits.detach(), grads)
        undo()
    (l32, g32), (l1, g1), (lg, gg) = results["fp32"], results["single"], results["group"]
    assert torch.allclose(lg, l1, rtol=1e-5, atol=1e-5)
    err_single = (g1 - g32).norm() / g32.norm()
    err_group = (gg - g32).norm() / g32.norm()
    assert err_single < 0.05 and err_group < 0.05, (err_single, err_group)


@pytest.mark.parametrize("method", ["full", "qlora"])
def test_int8_is_refused_where_projections_are_not_frozen_fp32(method):
    with pytest.raises(LorakitError, match="int8"):
        resolve_speed(model_type="llama", method=method, device=torch.device("cpu"), precision="int8")


def test_int8_groups_projections_and_keeps_no_fp32_copies():
    plan = resolve_speed(model_type="llama", method="lora", device=torch.device("cpu"), precision="int8")
    assert plan.precision == "int8" and plan.fuse and not plan.own_weights


def test_inference_refuses_int8():
    from lorakit.runtime.precision import hold_base_in

    with pytest.raises(LorakitError, match="use one of fp32, bf16, auto"):
        hold_base_in(nn.Linear(2, 2), "int8")
