"""Fused frozen projections compute what the separate ones do, and unfuse restores the model."""

from __future__ import annotations

import pytest
import torch

from lorakit.adapters import LoraConfig, add_adapter, set_trainable
from lorakit.data.schema import Sample
from lorakit.train.batches import padded_batch
from lorakit.train.fuse import FusedSlice, fuse_projections, unfuse_projections
from lorakit.train.objective import causal_lm_loss
from tests.adapters.helpers import randomize_adapter
from lorakit.families import FAMILIES, decoder_layers
from tests.conftest import tiny_model

FUSE = [f.name for f in FAMILIES if f.fuse]  # every family whose projections the registry fuses


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss, n = causal_lm_loss(model, batch)
    (loss / n).backward()
    return loss.item() / n, {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("variant", [{}, {"use_dora": True}])
@pytest.mark.parametrize("arch", FUSE)  # qwen2: biases on q/k/v; gemma: q/k norms after the projections
def test_fused_model_matches_unfused(arch, variant):
    model = tiny_model(arch)
    add_adapter(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], **variant))
    randomize_adapter(model)
    set_trainable(model, "default")
    model.train()
    g = torch.Generator().manual_seed(0)
    batch = padded_batch([Sample(torch.randint(1, 96, (n,), generator=g).tolist()) for n in (9, 14)], 0, False)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    ref_loss, ref_grads = _loss_and_grads(model, batch)

    assert fuse_projections(model) == 2 * 2  # two layers x (qkv, gate/up)
    assert isinstance(decoder_layers(model)[0].self_attn.k_proj, FusedSlice)  # an untargeted member
    loss, grads = _loss_and_grads(model, batch)
    assert abs(loss - ref_loss) <= 1e-6 * abs(ref_loss)
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        assert (grads[k] - ref_grads[k]).abs().max() <= 1e-6, k

    unfuse_projections(model)
    after = model.state_dict()
    assert after.keys() == before_state.keys()
    assert all(torch.equal(after[k], v) for k, v in before_state.items())


def test_trainable_base_weights_are_not_fused():
    model = tiny_model("llama")
    model.requires_grad_(True)
    assert fuse_projections(model) == 0
