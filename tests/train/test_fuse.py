"""Fused frozen projections compute what the separate ones do, and unfuse restores the model."""

from __future__ import annotations

import sys

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


def _resident_kb(path) -> int:
    """This process's resident pages of the mappings of file `path` (Linux /proc/self/smaps), kB."""
    total, inside = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                inside = len(fields) >= 6 and fields[5] == str(path)
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_fusing_a_model_read_from_its_file_returns_the_members_file_pages(tmp_path):
    """The fused copy holds q/k/v and gate/up: their pages of the mapped weights file leave the process
    (they would otherwise count twice for as long as the file stays mapped), and nothing changes value."""
    import transformers as tf

    from lorakit.models import load_model

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    tf.LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    model, _ = load_model(tmp_path, with_tokenizer=False)
    model.requires_grad_(False)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        before = model(ids).logits  # reads every weight: all of the file's pages resident
    weights = (tmp_path / "model.safetensors").resolve()
    resident = _resident_kb(weights)
    members = [getattr(layer.self_attn, n).weight for layer in decoder_layers(model) for n in ("q_proj", "k_proj", "v_proj")]
    members += [getattr(layer.mlp, n).weight for layer in decoder_layers(model) for n in ("gate_proj", "up_proj")]
    size = sum(w.nbytes for w in members)
    assert resident * 1024 > size  # the test reads what it means to: the members are file-backed
    assert fuse_projections(model) == 4
    partial = len(members) * 2 * 4096  # each member may keep a partial page at either end
    assert _resident_kb(weights) * 1024 <= resident * 1024 - size + partial
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, before, atol=1e-6, rtol=1e-5)
