"""Prefix/prompt adapters that cannot load or attach: one line naming the folder, the model unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorakit.adapters import (
    PrefixTuningConfig,
    PromptTuningConfig,
    add_prefix_tuning,
    add_prompt_tuning,
    load_adapter,
    remove_virtual_adapter,
    save_virtual_adapter,
    virtual_adapter,
)
from lorakit.errors import AdapterLoadError, LorakitError
from tests.conftest import output_of, tiny_inputs, tiny_model


def _saved(tmp_path, prefix: bool = True, projection: bool = False):
    model = tiny_model("llama")
    if prefix:
        add_prefix_tuning(model, PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=projection))
    else:
        add_prompt_tuning(model, PromptTuningConfig(num_virtual_tokens=3))
    return save_virtual_adapter(model, tmp_path / "adapter")


def _edit_config(**changes):
    def edit(folder):
        config = json.loads((folder / "adapter_config.json").read_text())
        config.update(changes)
        (folder / "adapter_config.json").write_text(json.dumps(config))
    return edit


def _edit_tensors(fn):
    def edit(folder):
        save_file(fn(load_file(folder / "adapter_model.safetensors")), folder / "adapter_model.safetensors")
    return edit


BAD = {
    "another base (layers)": (_edit_config(num_layers=3), "num_layers=3"),
    "another base (kv width)": (_edit_config(token_dim=32), "token_dim=32"),
    "seq-cls task": (_edit_config(task_type="SEQ_CLS"), "a sequence-classification adapter (task_type SEQ_CLS) cannot "
                                                        "load onto LlamaForCausalLM"),
    "token-cls task": (_edit_config(task_type="TOKEN_CLS"), "CAUSAL_LM and SEQ_CLS only"),
    "saved modules": (_edit_config(modules_to_save=["lm_head"]), "only a SEQ_CLS adapter's classifier head"),
    "encoder-decoder": (_edit_config(num_transformer_submodules=2), "num_transformer_submodules"),
    "tokens as text": (_edit_config(num_virtual_tokens="3"), "num_virtual_tokens"),
    "projection as text": (_edit_config(prefix_projection="false"), "prefix_projection"),
    "unknown init": (_edit_config(init_weights="ones"), "init_weights"),
    "wrong shape": (_edit_tensors(lambda t: {"prompt_embeddings": t["prompt_embeddings"][:2]}), "shape"),
    "extra tensor": (_edit_tensors(lambda t: {**t, "base_model.model.lm_head.weight": torch.zeros(2)}), "one tensor"),
    "not finite": (_edit_tensors(lambda t: {"prompt_embeddings": t["prompt_embeddings"] * float("nan")}), "NaN"),
    "integer": (_edit_tensors(lambda t: {"prompt_embeddings": t["prompt_embeddings"].long()}), "dtype"),
}


def _untouched(model):
    assert virtual_adapter(model) is None and not hasattr(model, "lorakit_prompt")
    assert not model._forward_pre_hooks and not model.base_model._forward_pre_hooks
    assert all(p.requires_grad for p in model.parameters()), "a failed load froze the base"


@pytest.mark.parametrize("case", list(BAD))
def test_bad_folder_is_refused_in_one_line_and_changes_nothing(case, tmp_path):
    edit, words = BAD[case]
    folder = _saved(tmp_path)
    edit(folder)
    model = tiny_model("llama")
    with pytest.raises(AdapterLoadError) as info:
        load_adapter(model, folder)
    message = str(info.value)
    assert words in message and str(folder) in message and "\n" not in message
    _untouched(model)


def test_unknown_prompt_init_is_refused(tmp_path):
    folder = _saved(tmp_path, prefix=False)
    _edit_config(prompt_tuning_init="ZEROS")(folder)
    with pytest.raises(AdapterLoadError, match="prompt_tuning_init"):
        load_adapter(tiny_model("llama"), folder)


def test_projected_prefix_loads_to_run_only(tmp_path):
    folder = _saved(tmp_path, projection=True)
    model = tiny_model("llama")
    with pytest.raises(AdapterLoadError, match="trainable=False"):
        load_adapter(model, folder, trainable=True)
    _untouched(model)
    record = load_adapter(model, folder)
    assert record.encoder.transform is None and not any(p.requires_grad for p in model.parameters())


def test_models_it_cannot_attach_to_are_refused():
    from transformers import BertForMaskedLM

    with pytest.raises(LorakitError, match="causal LMs .* and sequence classifiers"):
        add_prompt_tuning(BertForMaskedLM(tiny_model("bert").config), PromptTuningConfig(num_virtual_tokens=2))
    model = tiny_model("llama")
    model.gradient_checkpointing_enable()
    with pytest.raises(LorakitError, match="gradient checkpointing"):
        add_prefix_tuning(model, PrefixTuningConfig(num_virtual_tokens=2))
    model = tiny_model("llama")
    add_prompt_tuning(model, PromptTuningConfig(num_virtual_tokens=2))
    with pytest.raises(LorakitError, match="remove_virtual_adapter"):
        add_prefix_tuning(model, PrefixTuningConfig(num_virtual_tokens=2))


@pytest.mark.parametrize("bad", [{"num_virtual_tokens": 0}, {"num_virtual_tokens": True}, {"init": "ones"},
                                 {"encoder_hidden_size": -1}, {"prefix_projection": "yes"}])
def test_bad_prefix_config_is_refused(bad):
    with pytest.raises(LorakitError):
        PrefixTuningConfig(**bad)


@pytest.mark.parametrize("bad", [{"init": "text"}, {"init": "text", "init_text": "a"}, {"init": "vocab"}])
def test_bad_prompt_config_is_refused(bad):
    with pytest.raises(LorakitError):
        PromptTuningConfig(**bad)


@pytest.mark.parametrize("prefix", [True, False], ids=["prefix", "prompt"])
def test_a_cache_without_the_virtual_tokens_is_refused(prefix):
    from transformers import DynamicCache

    model = tiny_model("llama")
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(**inputs, cache=cache, use_cache=True)  # a cache the base filled, with no virtual tokens
        (add_prefix_tuning if prefix else add_prompt_tuning)(
            model, (PrefixTuningConfig if prefix else PromptTuningConfig)(num_virtual_tokens=2))
        with pytest.raises(LorakitError, match="empty cache"):
            model(**inputs, cache=cache, use_cache=True)
        with pytest.raises(LorakitError, match="DynamicCache"):
            model(**inputs, cache=object(), use_cache=True)


@pytest.mark.parametrize("prefix", [True, False], ids=["prefix", "prompt"])
def test_removing_the_adapter_gives_the_base_back(prefix):
    model, inputs = tiny_model("llama"), tiny_inputs("llama")
    base = output_of(model, inputs)
    (add_prefix_tuning if prefix else add_prompt_tuning)(
        model, (PrefixTuningConfig if prefix else PromptTuningConfig)(num_virtual_tokens=2))
    assert output_of(model, inputs).shape[1] == base.shape[1] + (0 if prefix else 2)
    remove_virtual_adapter(model)
    assert torch.equal(output_of(model, inputs), base)
    assert virtual_adapter(model) is None and not hasattr(model, "lorakit_prompt")
    assert not model._forward_pre_hooks and not model.base_model._forward_pre_hooks
