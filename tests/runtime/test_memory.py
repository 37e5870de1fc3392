"""own_weights moves weights out of the file mapping without changing a value or untying a tie."""

from __future__ import annotations

import sys

import pytest
import torch

from lorakit.models import load_model
from lorakit.runtime.memory import file_backed, own_weights, release_free_heap
from tests.train.conftest import tiny_model_dir  # noqa: F401  (fixture)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_own_weights_copies_file_backed_weights_and_keeps_values_and_ties(tiny_model_dir):  # noqa: F811
    model, _ = load_model(tiny_model_dir, with_tokenizer=False)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        before = model(ids).logits
    assert any(file_backed(p) for p in model.parameters())  # transformers maps the safetensors file
    assert own_weights(model) > 0
    assert not any(file_backed(t) for t in [*model.parameters(), *model.buffers()])
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    release_free_heap()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    assert own_weights(model) == 0  # nothing left to copy

