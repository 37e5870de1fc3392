"""Hot loading in two parts: `prepare_adapter` (any thread, model only read) and `attach_adapter` (engine thread)."""

from __future__ import annotations

import pytest
import torch


def _snapshot(model) -> tuple:
    """Everything a load could change: module tree, adapter registry, every parameter's identity and version."""
    from lorakit.adapters import adapters

    modules = tuple((n, id(m)) for n, m in model.named_modules())
    params = tuple((n, id(p), p._version, p.requires_grad) for n, p in model.named_parameters())
    return modules, params, tuple(adapters(model))


def _logits(model, name: str, ids: torch.Tensor) -> torch.Tensor:
    from lorakit.adapters import set_adapter

    set_adapter(model, name)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture()
def dora_dir(tmp_path, tiny_dir):
    """A saved DoRA adapter (all-linear, r=4) for the tiny model, with a non-trivial magnitude."""
    from lorakit.adapters import LoraConfig, add_adapter, adapter_parameters, save_adapter
    from lorakit.models import load_model

    model, _ = load_model(tiny_dir, with_tokenizer=False)
    add_adapter(model, LoraConfig(r=4, alpha=8, target_modules="all-linear", use_dora=True), "d")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in adapter_parameters(model, "d"):
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    save_adapter(model, tmp_path / "d", name="d")
    return tmp_path / "d"


@pytest.mark.parametrize("which", ["a1", "a3", "dora"])
def test_prepare_changes_nothing_and_attach_equals_a_fresh_load(tiny_dir, adapter_root, dora_dir, which):
    from lorakit.adapters import adapters, load_adapter
    from lorakit.adapters.io import attach_adapter, prepare_adapter
    from lorakit.models import load_model

    path = dora_dir if which == "dora" else adapter_root / which
    ids = torch.randint(3, 1000, (2, 7), generator=torch.Generator().manual_seed(0))
    fresh, _ = load_model(tiny_dir, with_tokenizer=False)
    load_adapter(fresh, path, "new")  # the plain way, on a model with no other adapter
    want = _logits(fresh, "new", ids)

    served, _ = load_model(tiny_dir, with_tokenizer=False)
    load_adapter(served, adapter_root / "a0", "a0")  # every linear wrapped: attach only inserts modules
    before = _snapshot(served)
    prepared = prepare_adapter(served, path, "new")
    assert prepared.parts is not None
    assert _snapshot(served) == before
    attach_adapter(served, prepared)
    assert set(adapters(served)) == {"a0", "new"}
    torch.testing.assert_close(_logits(served, "new", ids), want, rtol=0, atol=0)
    assert all(not p.requires_grad for p in served.parameters())


def test_attach_after_an_unload_unwrapped_the_targets(tiny_dir, adapter_root):
    """An unload between prepare and attach makes the plan stale; attach must notice and still load right."""
    from lorakit.adapters import adapters, delete_adapter, load_adapter
    from lorakit.adapters.io import attach_adapter, prepare_adapter
    from lorakit.models import load_model

    ids = torch.randint(3, 1000, (1, 6), generator=torch.Generator().manual_seed(1))
    fresh, _ = load_model(tiny_dir, with_tokenizer=False)
    load_adapter(fresh, adapter_root / "a1", "a1")
    want = _logits(fresh, "a1", ids)

    model, _ = load_model(tiny_dir, with_tokenizer=False)
    load_adapter(model, adapter_root / "a0", "a0")
    prepared = prepare_adapter(model, adapter_root / "a1", "a1")
    delete_adapter(model, "a0")  # every wrapper goes back to its base linear
    attach_adapter(model, prepared)
    assert list(adapters(model)) == ["a1"]
    torch.testing.assert_close(_logits(model, "a1", ids), want, rtol=0, atol=0)


def test_refused_adapters_change_nothing(tiny_dir, adapter_root):
    from lorakit.adapters import load_adapter
    from lorakit.adapters.io import attach_adapter, prepare_adapter
    from lorakit.errors import AdapterLoadError
    from lorakit.models import load_model

    model, _ = load_model(tiny_dir, with_tokenizer=False)
    load_adapter(model, adapter_root / "a0", "a0")
    before = _snapshot(model)
    with pytest.raises(AdapterLoadError, match="different base model"):
        prepare_adapter(model, adapter_root / "alien", "alien")
    prepared = prepare_adapter(model, adapter_root / "a1", "a0b")
    load_adapter(model, adapter_root / "a2", "a0b")  # the name got taken meanwhile
    taken = _snapshot(model)
    with pytest.raises(AdapterLoadError, match="already loaded"):
        attach_adapter(model, prepared)
    assert _snapshot(model) == taken != before
