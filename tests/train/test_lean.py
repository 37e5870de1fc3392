"""Lean layers store less for backward and change nothing else: loss and gradients bitwise equal."""

from __future__ import annotations

import pytest
import torch

from lorakit.adapters import LoraConfig, add_adapter, set_trainable
from lorakit.plan.activations import activation_bytes
from lorakit.plan.arch import arch_facts
from lorakit.train import recompute
from lorakit.train.fuse import fuse_projections, unfuse_projections
from lorakit.train.lean import LeanMLP, lean_layers, restore_layers
from lorakit.train.loss import shift_labels
from lorakit.train.objective import causal_lm_loss
from lorakit.families import FAMILIES
from tests.conftest import tiny_model

LEAN = [f.name for f in FAMILIES if f.lean]  # every family whose lean layers the registry allows


def _step(model, batch, monkeypatch):
    """Loss, gradients and the bytes of distinct non-parameter storages autograd keeps."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}
    pack = recompute._pack

    def spy(recipes, t):  # calls through; records what is stored rather than recomputed
        out = pack(recipes, t)
        if isinstance(out, torch.Tensor) and out.untyped_storage().data_ptr() not in params:
            kept[out.untyped_storage().data_ptr()] = out.untyped_storage().nbytes()
        return out

    monkeypatch.setattr(recompute, "_pack", spy)
    loss, _ = causal_lm_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads, sum(kept.values())


@pytest.mark.parametrize("arch", LEAN)
@pytest.mark.parametrize("fuse", [False, True])
def test_lean_layers_are_bitwise_equal_and_store_less(arch, fuse, monkeypatch):
    torch.manual_seed(0)
    model = tiny_model(arch)
    add_adapter(model, LoraConfig(r=4, alpha=8, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if name.endswith("lora_B.weight"):
            torch.nn.init.normal_(p, std=0.1)  # B = 0 would hide errors in the paths through the adapters
    set_trainable(model, "default")
    model.train()
    names = set(model.state_dict())
    if fuse:
        fuse_projections(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    batch = {"input_ids": ids, "labels": shift_labels(ids)}
    loss_ref, grads_ref, kept_ref = _step(model, batch, monkeypatch)
    assert lean_layers(model) == model.config.num_hidden_layers
    loss, grads, kept = _step(model, batch, monkeypatch)
    assert torch.equal(loss, loss_ref)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        assert torch.equal(grads[name], grads_ref[name]), name
    # per layer: act(gate) and the gated product (tokens x intermediate), two norm outputs (tokens x hidden)
    cfg = model.config
    per_layer = 4 * ids.numel() * (2 * cfg.intermediate_size + 2 * cfg.hidden_size)
    # except the first norm: it reads the frozen embedding, so its output is kept (nothing else is)
    first_norm = 4 * ids.numel() * cfg.hidden_size
    assert kept_ref - kept == per_layer * cfg.num_hidden_layers - first_norm
    # and the planner predicts exactly that saving
    arch = arch_facts(cfg, 4, "all-linear", "lora")
    planned = [activation_bytes(arch, "lora", ids.numel(), 4, False, lean=lean) for lean in (False, True)]
    assert planned[0] - planned[1] == kept_ref - kept
    if fuse:
        unfuse_projections(model)
    restore_layers(model)
    assert not any(isinstance(m, LeanMLP) for m in model.modules())
    assert set(model.state_dict()) == names
    _, grads_after, kept_after = _step(model, batch, monkeypatch)  # hooks gone: stores as before
    assert kept_after == kept_ref


@pytest.mark.parametrize("arch", [f.name for f in FAMILIES if not f.lean])
def test_other_mlps_are_left_alone(arch):
    assert lean_layers(tiny_model(arch)) == 0


def test_an_activation_other_than_the_registry_s_is_left_alone():
    """Lean layers recompute the activation they know: a model whose act_fn differs keeps its MLP."""
    model = tiny_model("gemma")
    for layer in model.model.layers:
        layer.mlp.act_fn = torch.nn.SiLU()  # not the tanh GELU the gemma entry names
    assert lean_layers(model) == 0


def test_without_grad_the_output_is_the_same():
    torch.manual_seed(0)
    model = tiny_model("llama")
    ids = torch.randint(0, model.config.vocab_size, (1, 10))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        lean_layers(model)
        assert torch.equal(model(input_ids=ids).logits, ref)


def test_a_registration_is_used_only_for_the_unchanged_tensor():
    """The recipe stands in for exactly the registered values: not after an in-place change."""
    for modify, expected_recipes in ((False, 1), (True, 0)):
        recipes_used = []
        with recompute.recomputing():
            x = torch.randn(64, requires_grad=True)
            y = x * 2
            recompute.register(y, lambda a: recipes_used.append(1) or a * 2, x.detach())
            if modify:
                y.mul_(3)
            w = (y * y).sum()  # saves y twice: one recomputation serves both
        w.backward()
        assert len(recipes_used) == expected_recipes
        assert torch.allclose(x.grad, (2 * y * (6 if modify else 2)).detach())
