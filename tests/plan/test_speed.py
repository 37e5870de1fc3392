"""The speed plan holds every interaction rule, and applying it is undone exactly."""

from __future__ import annotations

import pytest
import torch
import yaml

from lorakit.adapters import LoraConfig, add_adapter, set_trainable
from lorakit.families import FAMILIES
from lorakit.plan.speed import RECOMPUTE_ATTENTION, resolve_speed
from lorakit.train.config import TrainConfig
from lorakit.train.fuse import FusedBase, FusedSlice
from lorakit.train.lean import LeanMLP
from lorakit.train.speed import apply_speed_plan
from tests.conftest import tiny_model

CPU = torch.device("cpu")


def _plan(model_type="llama", method="lora", **options):
    return resolve_speed(model_type=model_type, method=method, device=CPU, **options)


def test_defaults_fuse_and_lean_where_the_family_allows():
    plan = _plan()
    assert plan.fuse and plan.lean and plan.own_weights and not plan.compile and plan.precision == "fp32"
    assert plan.attention is None and not plan.frozen_bf16 and not plan.compiled_loss and plan.notes == ()


def test_compile_replaces_fuse_and_lean_and_says_so():
    plan = _plan(compile=True)
    assert plan.compile and not plan.fuse and not plan.lean and not plan.own_weights
    assert any(n.startswith("fuse off: --compile") for n in plan.notes)
    assert any(n.startswith("lean off: --compile") for n in plan.notes)


def test_checkpointing_turns_lean_off_but_keeps_fuse():
    plan = _plan(grad_checkpoint=True)
    assert plan.fuse and not plan.lean and "lean off: gradient checkpointing discards those activations anyway" in plan.notes


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_family_gets_the_paths_it_allows_and_a_reason_for_the_others(family):
    plan = _plan(family.model_types[0])
    assert plan.fuse == bool(family.fuse) and plan.lean == bool(family.lean)
    for path in ("fuse", "lean"):
        if not getattr(plan, path):
            assert f"{path} off: {family.reason(path)}" in plan.notes


def test_methods_that_train_or_quantize_the_projections_do_not_fuse():
    assert not _plan(method="full").fuse and not _plan(method="qlora").fuse
    assert _plan(method="dora").fuse and _plan(method="head").fuse


def test_bf16_rules():
    bf16 = _plan(precision="bf16")
    assert bf16.precision == "bf16" and bf16.frozen_bf16 and not bf16.compiled_loss and bf16.attention is None
    for method in ("dora", "full", "head", "qlora"):  # bf16-held weights are for plain LoRA only
        assert not _plan(method=method, precision="bf16").frozen_bf16
    compiled = _plan(precision="bf16", compile=True)
    assert compiled.compiled_loss and compiled.attention == RECOMPUTE_ATTENTION
    assert not _plan(compile=True).compiled_loss  # fp32 logits keep the in-place loss
    assert _plan(precision="bf16", compile=True, grad_checkpoint=True).attention is None
    assert _plan(precision="bf16", compile=True, attention="sdpa").attention == "sdpa"  # asked for wins


def test_apply_then_undo_gives_back_the_same_modules_and_values():
    torch.manual_seed(0)
    model = tiny_model("gemma3")
    add_adapter(model, LoraConfig(r=4, target_modules="all-linear"))
    set_trainable(model, "default")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(1, 96, (2, 9))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    undo = apply_speed_plan(model, _plan("gemma3_text", attention="eager"))
    assert any(isinstance(m, LeanMLP) for m in model.modules())
    assert any(isinstance(m, FusedSlice) for m in model.modules())
    assert model.config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, ref, rtol=1e-5, atol=1e-6)
    undo()
    assert not any(isinstance(m, (LeanMLP, FusedSlice, FusedBase)) for m in model.modules())
    assert model.config._attn_implementation != "eager"
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_the_plan_is_saved_with_the_config_and_the_config_reads_back(tmp_path):
    cfg = TrainConfig(rank=4, compile=True)
    plan = _plan(**{k: v for k, v in cfg.speed_settings().items() if k != "method"}, method=cfg.method)
    path = cfg.write(tmp_path, speed_plan=plan.to_dict())
    saved = yaml.safe_load(path.read_text())
    assert saved["speed_plan"]["compile"] is True and saved["speed_plan"]["fuse"] is False
    assert TrainConfig.resolve(str(path), {}) == cfg  # -c train_config.yaml re-runs the same settings
