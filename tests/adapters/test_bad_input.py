"""Bad adapters and configs: one clear error naming the file or module, and the model unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from lorakit.adapters import LoraConfig, adapters, add_adapter, load_adapter, save_adapter
from lorakit.errors import AdapterLoadError, LorakitError
from tests.adapters.helpers import randomize_adapter
from tests.conftest import tiny_model


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, snapshot):
    state = model.state_dict()
    assert state.keys() == snapshot.keys()
    for k, v in snapshot.items():
        assert torch.equal(state[k], v), k
    assert not adapters(model)
    assert not any(p.requires_grad is False for p in model.parameters()), "load froze the base model"


@pytest.fixture
def saved_adapter(tmp_path):
    model = tiny_model("llama")
    add_adapter(model, LoraConfig(r=4, target_modules="all-linear", use_dora=True))
    randomize_adapter(model)
    return save_adapter(model, tmp_path / "adapter")


def test_adapter_for_another_base_is_refused(saved_adapter):
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    other = tf.LlamaForCausalLM(cfg)
    snap = _snapshot(other)
    with pytest.raises(AdapterLoadError, match=r"adapter_model.safetensors: .*shape .* different base model"):
        load_adapter(other, saved_adapter)
    assert_unchanged(other, snap)


def test_adapter_with_modules_the_model_lacks_is_refused(saved_adapter):
    import transformers as tf

    other = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48,
                                               num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
    snap = _snapshot(other)
    with pytest.raises(AdapterLoadError, match=r"layers\.1\..* no module of this model"):
        load_adapter(other, saved_adapter)
    assert_unchanged(other, snap)


def test_truncated_weights_are_refused(saved_adapter):
    weights = saved_adapter / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    model = tiny_model("llama")
    snap = _snapshot(model)
    with pytest.raises(AdapterLoadError, match=r"adapter_model.safetensors: truncated or corrupt"):
        load_adapter(model, saved_adapter)
    assert_unchanged(model, snap)


def test_garbage_weights_are_refused(saved_adapter):
    (saved_adapter / "adapter_model.safetensors").write_bytes(b"\x00\x01not a safetensors file")
    model = tiny_model("llama")
    snap = _snapshot(model)
    with pytest.raises(AdapterLoadError, match="truncated or corrupt"):
        load_adapter(model, saved_adapter)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("peft_type", ["IA3", "P_TUNING"])
def test_unknown_peft_type_is_refused(saved_adapter, peft_type):
    cfg_file = saved_adapter / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["peft_type"] = peft_type
    cfg_file.write_text(json.dumps(cfg))
    model = tiny_model("llama")
    snap = _snapshot(model)
    with pytest.raises(AdapterLoadError, match=rf"adapter_config.json: peft_type '{peft_type}' is not supported"):
        load_adapter(model, saved_adapter)
    assert_unchanged(model, snap)


def test_invalid_json_config_is_refused(saved_adapter):
    (saved_adapter / "adapter_config.json").write_text("{not json")
    model = tiny_model("llama")
    snap = _snapshot(model)
    with pytest.raises(AdapterLoadError, match="adapter_config.json: not valid JSON"):
        load_adapter(model, saved_adapter)
    assert_unchanged(model, snap)


def test_rank_zero_in_file_is_refused(saved_adapter):
    cfg_file = saved_adapter / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["r"] = 0
    cfg_file.write_text(json.dumps(cfg))
    model = tiny_model("llama")
    snap = _snapshot(model)
    with pytest.raises(AdapterLoadError, match="adapter_config.json: LoRA rank r must be a positive integer"):
        load_adapter(model, saved_adapter)
    assert_unchanged(model, snap)


def test_pickled_adapter_is_refused_with_a_conversion_hint(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}))
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle would run code")
    model = tiny_model("llama")
    snap = _snapshot(model)
    with pytest.raises(AdapterLoadError, match=r"adapter_model.bin: pickled adapters are not loaded.*save_file"):
        load_adapter(model, tmp_path)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("r", [0, -4])
def test_rank_must_be_positive(r):
    with pytest.raises(LorakitError, match="rank r must be a positive integer"):
        LoraConfig(r=r)


def test_targets_that_match_nothing_leave_model_unchanged():
    model = tiny_model("llama")
    snap = _snapshot(model)
    with pytest.raises(LorakitError, match=r"target_modules=\['qkv'\] matched no module of LlamaForCausalLM"):
        add_adapter(model, LoraConfig(target_modules=["qkv"]))
    assert_unchanged(model, snap)


def test_target_of_an_unsupported_type_is_named():
    model = tiny_model("llama")
    snap = _snapshot(model)
    with pytest.raises(LorakitError, match="'model.layers.0.input_layernorm' is a LlamaRMSNorm"):
        add_adapter(model, LoraConfig(target_modules=["q_proj", "input_layernorm"]))
    assert_unchanged(model, snap)


def test_duplicate_adapter_name_is_refused(saved_adapter):
    model = tiny_model("llama")
    load_adapter(model, saved_adapter, "style")
    before = _snapshot(model)
    with pytest.raises(AdapterLoadError, match="'style' is already loaded"):
        load_adapter(model, saved_adapter, "style")
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items()) and after.keys() == before.keys()


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(AdapterLoadError, match="nope: adapter directory not found"):
        load_adapter(tiny_model("llama"), tmp_path / "nope")


def test_targets_flag_parsing_is_shared():
    from lorakit.adapters.targets import parse_targets

    assert parse_targets("all-linear") == "all-linear"
    assert parse_targets("q_proj, v_proj") == ["q_proj", "v_proj"]
    assert parse_targets("attn.c_proj") == ["attn.c_proj"]  # a dotted suffix, not a regex
    assert parse_targets(r".*\.(q|v)_proj") == r".*\.(q|v)_proj"


@pytest.mark.parametrize("poison", ["nan", "inf", "int"])
def test_non_finite_or_integer_weights_are_refused_and_nothing_changes(saved_adapter, poison):
    """A diverged run's NaN/inf factors or an integer tensor would load and silently ruin every output."""
    from safetensors.torch import load_file, save_file

    path = saved_adapter / "adapter_model.safetensors"
    tensors = load_file(path)
    key = sorted(k for k in tensors if k.endswith("lora_B.weight"))[0]
    if poison == "int":
        tensors[key] = tensors[key].to(torch.int32)
    else:
        tensors[key][0, 0] = float(poison)
    save_file(tensors, path)
    model = tiny_model("llama")
    snap = _snapshot(model)
    expected = "dtype int32" if poison == "int" else "NaN or infinite"
    with pytest.raises(AdapterLoadError, match=f"adapter_model.safetensors: .*{expected}") as info:
        load_adapter(model, saved_adapter)
    assert "\n" not in str(info.value) and key in str(info.value)
    assert_unchanged(model, snap)
