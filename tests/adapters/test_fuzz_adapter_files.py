"""Fuzzing adapter directories (adapter_config.json and the safetensors file) with hypothesis.

Property: a load either gives the adapter the files describe (integer rank, the file's alpha
and flags) or raises one line naming the file, with the model and the files unchanged.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lorakit.adapters import LoraConfig, adapters, add_adapter, delete_adapter, load_adapter, save_adapter
from lorakit.errors import AdapterLoadError, LorakitError
from tests.adapters.helpers import randomize_adapter
from tests.conftest import tiny_model
from tests.test_fuzz_inputs import FUZZ, check_refusal, hostile_json, json_values

PEFT_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "use_dora", "init_lora_weights",
             "bias", "modules_to_save", "layers_to_transform", "rank_pattern", "alpha_pattern", "lora_bias",
             "peft_type", "fan_in_fan_out")
# values the brief names, beside arbitrary JSON: strings for numbers, fractions, bools, NaN
TRICKY = st.sampled_from(["8", 8.5, True, False, -1, 0, 1e9, 10**9, "yes", "false", float("nan"), float("inf"),
                          [1, 2], {"q_proj": "x"}, ["q_proj", 3], None, 4, 4.0, [0], "q_proj"])
_TEMPLATE: dict = {}


def template() -> Path:
    """A saved r=4 LoRA on q_proj/v_proj of the tiny llama, made once and copied per example."""
    if "dir" not in _TEMPLATE:
        model = tiny_model("llama")
        add_adapter(model, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
        randomize_adapter(model)
        _TEMPLATE["dir"] = save_adapter(model, Path(tempfile.mkdtemp(prefix="fuzz-adapter-")) / "adapter")
    return _TEMPLATE["dir"]


def _model():
    """One tiny llama for every example: a failed load leaves it unchanged, a good one is deleted again."""
    if "model" not in _TEMPLATE:
        _TEMPLATE["model"] = tiny_model("llama")
    return _TEMPLATE["model"]


def load_property(write) -> None:
    """Copy the template, let `write(dir)` spoil it, load: the adapter the files say, or one line + no change."""
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp) / "adapter"
        shutil.copytree(template(), adapter)
        write(adapter)
        model = _model()
        _TEMPLATE.pop("model")  # back in the cache only once this example leaves it as it found it
        before = {k: v.clone() for k, v in model.state_dict().items()}
        result = check_refusal(lambda: load_adapter(model, adapter), str(adapter), Path(tmp))
        if isinstance(result, LorakitError):
            assert isinstance(result, AdapterLoadError), type(result)
            after = model.state_dict()
            assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
            assert not adapters(model)
            _TEMPLATE["model"] = model
            return
        data = json.loads((adapter / "adapter_config.json").read_text())
        cfg = adapters(model)["default"].config
        assert type(data["r"]) is int and cfg.r == data["r"], f"r={data['r']!r} loaded as {cfg.r!r}"
        alpha = data.get("lora_alpha", 8)
        assert isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha)
        assert cfg.alpha == alpha
        for key, value in (("use_dora", cfg.use_dora), ("use_rslora", cfg.use_rslora)):
            assert bool(data.get(key)) is value and data.get(key) in (None, True, False), f"{key}={data.get(key)!r}"
        delete_adapter(model, "default")  # the model goes back to its base modules for the next example
        _TEMPLATE["model"] = model


@FUZZ
@given(st.dictionaries(st.sampled_from(PEFT_KEYS), TRICKY | json_values(PEFT_KEYS), max_size=3),
       st.lists(st.sampled_from(PEFT_KEYS), max_size=2))
def test_any_adapter_config_loads_as_written_or_is_refused_in_one_line(changes, removed):
    def write(adapter: Path) -> None:
        path = adapter / "adapter_config.json"
        data = json.loads(path.read_text())
        data.update(changes)
        for key in removed:
            data.pop(key, None)
        path.write_text(json.dumps(data))

    load_property(write)


@FUZZ
@given(json_values(PEFT_KEYS).map(json.dumps) | hostile_json | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_any_config_document_is_refused_in_one_line_unless_it_is_an_adapter(text):
    load_property(lambda adapter: (adapter / "adapter_config.json").write_text(text))


@pytest.mark.parametrize(("field", "value"), [
    ("r", "8"), ("r", 8.5), ("r", True), ("r", -1), ("r", 0), ("r", 1e9), ("r", None), ("r", "abc"),
    ("r", float("inf")), ("lora_alpha", "x"), ("lora_alpha", float("nan")), ("lora_alpha", True),
    ("lora_alpha", None), ("lora_dropout", "x"), ("target_modules", 5), ("target_modules", {"a": 1}),
    ("target_modules", [1, 2]), ("use_dora", "yes"), ("use_dora", "false"), ("use_rslora", 1),
    ("rank_pattern", {"q_proj": "x"}), ("modules_to_save", 5), ("modules_to_save", [5]),
    ("layers_to_transform", "0"), ("layers_to_transform", [0.5]), ("init_lora_weights", {"x": 1}),
])
def test_a_wrong_typed_field_is_refused_naming_file_and_field(tmp_path, field, value):
    adapter = shutil.copytree(template(), tmp_path / "adapter")
    path = adapter / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    model = tiny_model("llama")
    with pytest.raises(AdapterLoadError) as info:
        load_adapter(model, adapter)
    message = str(info.value)
    assert "\n" not in message and f"{path}: " in message and f"'{field}'" in message, message
    assert not adapters(model)


def test_a_missing_rank_is_refused_naming_the_field(tmp_path):
    adapter = shutil.copytree(template(), tmp_path / "adapter")
    path = adapter / "adapter_config.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "r"}))
    with pytest.raises(AdapterLoadError, match=r"adapter_config.json: required field 'r' is missing"):
        load_adapter(tiny_model("llama"), adapter)


def test_a_rank_the_tensors_do_not_have_is_refused_naming_the_tensor(tmp_path):
    adapter = shutil.copytree(template(), tmp_path / "adapter")
    path = adapter / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "r": 8}))
    with pytest.raises(AdapterLoadError, match=r"adapter_config.json says r=8 but .*q_proj\.lora_A\.weight has "
                                               r"rank 4"):
        load_adapter(tiny_model("llama"), adapter)


# ---- the safetensors file: header length, header JSON, dtypes, offsets, truncation

DTYPES = ("F32", "F16", "BF16", "F64", "F8_E4M3", "F8_E5M2", "I8", "U8", "I64", "BOOL", "C64", "XX", "", "F4")


@st.composite
def spoiled_weights(draw) -> bytes:
    """The template's safetensors bytes with its header length, header or body spoiled."""
    good = (template() / "adapter_model.safetensors").read_bytes()
    n = struct.unpack("<Q", good[:8])[0]
    header, body = json.loads(good[8:8 + n]), good[8 + n:]
    kind = draw(st.sampled_from(["length", "header", "tensor", "dtype", "truncate", "bytes"]))
    if kind == "length":
        return struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + good[8:]
    if kind == "truncate":
        return good[:draw(st.integers(0, len(good) - 1))]
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "header":
        header = draw(json_values(("dtype", "shape", "data_offsets", "__metadata__")))
    else:
        key = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        if kind == "dtype":  # every tensor in the new dtype, offsets laid out to fit it
            dtype = draw(st.sampled_from(DTYPES))
            size = {"F16": 2, "BF16": 2, "F64": 8, "I64": 8, "C64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1,
                    "U8": 1, "BOOL": 1}.get(dtype, 4)
            offset = 0
            for name in sorted(k for k in header if k != "__metadata__"):
                numel = math.prod(header[name]["shape"])
                header[name].update(dtype=dtype, data_offsets=[offset, offset + numel * size])
                offset += numel * size
            body = draw(st.binary(min_size=offset, max_size=offset))
        else:
            header[key][draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(json_values())
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


@FUZZ
@given(spoiled_weights())
def test_any_safetensors_file_loads_or_is_refused_in_one_line(data):
    load_property(lambda adapter: (adapter / "adapter_model.safetensors").write_bytes(data))
