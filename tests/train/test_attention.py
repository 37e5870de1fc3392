"""`--attention eager_recompute`: eager attention's values, without keeping its probabilities."""

from __future__ import annotations

import pytest
import torch

from lorakit.train.attention import use_attention
from tests.conftest import tiny_inputs, tiny_model

ARCHS = ["llama", "qwen2", "mistral", "gemma", "gemma3", "phi3"]


def _loss_and_grads(model: torch.nn.Module, inputs: dict, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(seed)
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    return out.loss.detach(), [p.grad for p in model.parameters()]


def _padded_inputs(arch: str) -> dict:
    inputs = tiny_inputs(arch, batch=2, seq=16)
    inputs["attention_mask"][0, :3] = 0  # left padding: the mask matters
    return inputs


@pytest.mark.parametrize("arch", ARCHS)
def test_recomputed_attention_equals_eager_bitwise(arch):
    """Same function, same order of operations: loss and every gradient bitwise equal to eager."""
    results = []
    for name in ("eager", "eager_recompute"):
        model = tiny_model(arch).train()
        use_attention(model, name)
        results.append(_loss_and_grads(model, _padded_inputs(arch)))
    (loss, grads), (loss_rc, grads_rc) = results
    assert torch.equal(loss, loss_rc)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_rc))


def test_recomputed_attention_replays_its_dropout():
    """Attention dropout draws the same mask when the probabilities are recomputed in backward."""
    inputs, results = _padded_inputs("llama"), []
    for name in ("eager", "eager_recompute"):
        model = tiny_model("llama")
        for layer in model.model.layers:
            layer.self_attn.attention_dropout = 0.3
        model.train()
        use_attention(model, name)
        results.append(_loss_and_grads(model, inputs, seed=5))
    (loss, grads), (loss_rc, grads_rc) = results
    with torch.no_grad():  # dropout really acted
        assert not torch.equal(model.eval()(**inputs, labels=inputs["input_ids"]).loss, loss)
    assert torch.equal(loss, loss_rc)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_rc))


def _saved_bytes(model: torch.nn.Module, inputs: dict) -> int:
    """Bytes autograd keeps for backward during one forward pass (each storage once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**inputs, labels=inputs["input_ids"])
    return sum(seen.values())


def test_recomputed_attention_keeps_no_probabilities():
    """eager keeps batch x heads x T x T probabilities per layer; eager_recompute does not."""
    inputs = tiny_inputs("llama", batch=2, seq=48)
    saved = {}
    for name in ("eager", "eager_recompute"):
        model = tiny_model("llama").train()
        use_attention(model, name)
        saved[name] = _saved_bytes(model, inputs)
    cfg = model.config
    probs = cfg.num_hidden_layers * 2 * cfg.num_attention_heads * 48 * 48 * 4  # fp32 probabilities, all layers
    assert saved["eager"] - saved["eager_recompute"] >= probs
