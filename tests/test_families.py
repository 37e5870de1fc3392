"""The family registry is the one table of per-family facts, and each entry holds for its tiny model."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

import pytest

from lorakit.families import FALLBACK, FAMILIES, PLAIN, decoder_layers, family_for, family_of
from lorakit.naming import name_matches
from lorakit.train.fuse import fuse_projections
from lorakit.train.lean import lean_layers
from tests.conftest import TINY_ARCHS, tiny_model

BY_NAME = {f.name: f for f in FAMILIES}
PACKAGE = Path(__file__).resolve().parents[1] / "lorakit"


def test_every_family_has_a_tiny_model_of_its_model_type():
    assert set(TINY_ARCHS) == set(BY_NAME)
    for name in TINY_ARCHS:
        model = tiny_model(name)
        assert model.config.model_type in BY_NAME[name].model_types, name
        assert family_for(model) is BY_NAME[name]


def test_model_types_are_unique_and_unknown_ones_fall_back():
    types = [t for f in FAMILIES for t in f.model_types]
    assert len(types) == len(set(types))
    assert family_of("no-such-architecture") is FALLBACK and family_of(None) is FALLBACK
    assert not FALLBACK.fuse and FALLBACK.lean is None and FALLBACK.reason("fuse")


@pytest.mark.parametrize("name", TINY_ARCHS)
def test_presets_name_modules_the_model_has(name):
    family, model = BY_NAME[name], tiny_model(name)
    names = [n for n, _ in model.named_modules()]
    for preset, targets in family.presets.items():
        entries = [targets] if isinstance(targets, str) else targets
        for entry in entries:  # every suffix (or the regex) matches some module
            assert any(name_matches(n, entry if isinstance(targets, str) else [entry]) for n in names), (preset, entry)


@pytest.mark.parametrize("name", TINY_ARCHS)
def test_fast_paths_apply_exactly_where_the_registry_says(name):
    family = BY_NAME[name]
    model = tiny_model(name).requires_grad_(False)
    blocks = len(decoder_layers(model))
    assert fuse_projections(model) == blocks * len(family.fuse)
    assert lean_layers(tiny_model(name)) == (blocks if family.lean else 0)
    if family.fuse or family.lean:
        assert blocks == model.config.num_hidden_layers
    for path in ("fuse", "lean"):  # an off path says why, for the speed plan
        assert bool(family.reason(path)) == (not getattr(family, path))


def test_causal_lm_families_read_a_plain_head():
    assert {f.name for f in FAMILIES if f.head == PLAIN} >= {"llama", "qwen2", "gemma3", "phi3", "gpt2"}


def _string_literals(path: Path) -> set[str]:
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    out = set()
    for tok in tokens:
        if tok.type == tokenize.STRING and tok.string[:1] in "\"'" and not tok.string.startswith(('"""', "'''")):
            out.add(tok.string.strip("\"'"))
    return out


def test_no_other_module_keeps_a_model_type_table():
    """Per-family knowledge lives in lorakit/families.py only: no other module names a model_type."""
    model_types = {t for f in FAMILIES for t in f.model_types}
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "families.py":
            continue
        named = _string_literals(path) & model_types
        if named:
            offenders[str(path.relative_to(PACKAGE))] = sorted(named)
    assert not offenders, offenders
