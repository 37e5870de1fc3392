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
from lorakit.train.speed import int8_projections
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


def test_int8_swaps_only_frozen_linears_and_undo_restores_them(tiny_model_dir):
    from lorakit.adapters import LoraConfig, add_adapter
    from lorakit.models import load_model

    model, _ = load_model(tiny_model_dir, with_tokenizer=False)
    add_adapter(model, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    before = {n: m for n, m in model.named_modules()}
    undo = int8_projections(model)
    swapped = {n for n, m in model.named_modules() if isinstance(m, Int8MMLinear)}
    frozen = {n for n, m in before.items() if type(m) is nn.Linear and not m.weight.requires_grad
              and m is not model.get_output_embeddings()}
    assert swapped == frozen and swapped
    assert all(p.requires_grad is False for n in swapped for p in model.get_submodule(n).parameters())
    ids = torch.randint(0, 100, (2, 16))
    model(ids).logits.sum().backward()  # gradients flow through int8 layers to the adapters
    undo()
    assert all(model.get_submodule(n) is before[n] for n in frozen)


@pytest.mark.parametrize("method", ["full", "qlora"])
def test_int8_is_refused_where_projections_are_not_frozen_fp32(method):
    with pytest.raises(LorakitError, match="int8"):
        resolve_speed(model_type="llama", method=method, device=torch.device("cpu"), precision="int8")


def test_int8_turns_fuse_off_with_a_reason():
    plan = resolve_speed(model_type="llama", method="lora", device=torch.device("cpu"), precision="int8")
    assert plan.precision == "int8" and not plan.fuse
    assert any("int8" in note for note in plan.notes)


def test_inference_refuses_int8():
    from lorakit.runtime.precision import hold_base_in

    with pytest.raises(LorakitError, match="use one of fp32, bf16, auto"):
        hold_base_in(nn.Linear(2, 2), "int8")
