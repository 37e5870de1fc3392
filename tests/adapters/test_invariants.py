"""Properties every adapter must keep, whatever the architecture or variant."""

from __future__ import annotations

import pytest
import torch

from lorakit.adapters import (
    LoraConfig,
    active_adapters,
    adapters,
    add_adapter,
    delete_adapter,
    disable_adapters,
    merge,
    merge_and_unload,
    set_adapter,
    set_trainable,
    trainable_report,
    unload,
    unmerge,
)
from tests.adapters.helpers import randomize_adapter
from tests.conftest import output_of, tiny_inputs, tiny_model

ARCHS = ["llama", "qwen2", "gemma3", "phi3", "gpt2"]
VARIANTS = {"lora": {}, "rslora": {"use_rslora": True}, "dora": {"use_dora": True}}


def _config(arch: str, variant: str, **kw) -> LoraConfig:
    # the embedding and the output head are adapted too, on the tied-embedding models (llama here,
    # gemma3) included
    targets = "all-linear" if arch in ("phi3", "gpt2") else ["q_proj", "v_proj", "down_proj", "embed_tokens",
                                                             "lm_head"]
    return LoraConfig(r=4, alpha=8, target_modules=targets, **VARIANTS[variant], **kw)


def _base_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("arch", ARCHS)
def test_fresh_adapter_gives_base_output_exactly(arch, variant):
    model = tiny_model(arch)
    inputs = tiny_inputs(arch)
    base = output_of(model, inputs)
    add_adapter(model, _config(arch, variant))
    assert torch.equal(output_of(model, inputs), base)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("arch", ARCHS)
def test_merged_unmerged_unloaded_agree(arch, variant):
    model = tiny_model(arch)
    inputs = tiny_inputs(arch)
    base_out = output_of(model, inputs)
    add_adapter(model, _config(arch, variant))
    randomize_adapter(model)
    adapted = output_of(model, inputs)
    assert (adapted - base_out).abs().max() > 1e-3

    weights_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".base_layer." in n}
    merge(model)
    merged_once = {n: p.detach().clone() for n, p in model.named_parameters() if ".base_layer." in n}
    assert (output_of(model, inputs) - adapted).abs().max() <= 1e-5
    merge(model)  # merging twice is merging once
    for n, p in model.named_parameters():
        if n in merged_once:
            assert torch.equal(p, merged_once[n]), n

    with disable_adapters(model):  # disabling a merged model restores the base
        assert (output_of(model, inputs) - base_out).abs().max() <= 1e-5
    merge(model)
    unmerge(model)
    for n, p in model.named_parameters():
        if n in weights_before:
            assert (p - weights_before[n]).abs().max() <= 1e-6, n
    assert (output_of(model, inputs) - adapted).abs().max() <= 1e-5

    plain = merge_and_unload(model)
    assert not any(".base_layer." in n or "lora_" in n for n, _ in plain.named_parameters())
    assert (output_of(plain, inputs) - adapted).abs().max() <= 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_unload_and_disable_give_base(arch):
    model = tiny_model(arch)
    inputs = tiny_inputs(arch)
    base_out = output_of(model, inputs)
    base_keys = set(model.state_dict())
    add_adapter(model, _config(arch, "dora"))
    randomize_adapter(model)
    with disable_adapters(model):
        assert torch.equal(output_of(model, inputs), base_out)
    assert not torch.equal(output_of(model, inputs), base_out)
    unload(model)
    assert set(model.state_dict()) == base_keys
    assert torch.equal(output_of(model, inputs), base_out)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_training_step_moves_only_adapter_weights(variant):
    model = tiny_model("llama")
    base = _base_weights(model)
    add_adapter(model, _config("llama", variant, dropout=0.1))
    set_trainable(model, "default")
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(".base_layer." not in n for n, p in model.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    inputs = tiny_inputs("llama")
    model.train()
    for _ in range(2):
        opt.zero_grad()
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        opt.step()
    after = {n.replace(".base_layer", ""): p for n, p in model.named_parameters() if not p.requires_grad}
    for name, p in base.items():
        assert torch.equal(after[name], p), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)


def test_several_named_adapters_switch_and_delete():
    model = tiny_model("llama")
    inputs = tiny_inputs("llama")
    base_out = output_of(model, inputs)
    add_adapter(model, _config("llama", "lora"), "a")
    randomize_adapter(model, "a", seed=1)
    out_a = output_of(model, inputs)
    add_adapter(model, _config("llama", "dora"), "b")
    randomize_adapter(model, "b", seed=2)
    assert active_adapters(model) == ["a"]  # adding does not switch
    assert torch.equal(output_of(model, inputs), out_a)
    set_adapter(model, "b")
    out_b = output_of(model, inputs)
    assert not torch.allclose(out_a, out_b)
    set_adapter(model, ["a", "b"])  # both at once: the deltas add up
    both = output_of(model, inputs)
    assert not torch.allclose(both, out_a) and not torch.allclose(both, out_b)
    delete_adapter(model, "b")
    assert list(adapters(model)) == ["a"]
    set_adapter(model, "a")
    assert torch.equal(output_of(model, inputs), out_a)
    delete_adapter(model, "a")
    assert torch.equal(output_of(model, inputs), base_out)
    assert not any(".base_layer." in n for n in model.state_dict())


def test_parameter_report_counts_by_hand():
    model = tiny_model("llama")  # hidden 32, intermediate 48, kv 2 heads x 8 = 16, 2 layers, vocab 96 (tied)
    total_base = sum(p.numel() for p in model.parameters())
    add_adapter(model, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "down_proj"]))
    report = trainable_report(model)
    q = 4 * 32 + 32 * 4  # A (r, in) + B (out, r)
    k = 4 * 32 + 16 * 4
    down = 4 * 48 + 32 * 4
    assert report.per_module == {"q_proj": 2 * q, "k_proj": 2 * k, "down_proj": 2 * down}
    assert report.trainable == 2 * (q + k + down)
    assert report.total == total_base + report.trainable
    assert report.adapter_bytes == 4 * report.trainable
    assert f"{report.trainable:,}" in report.format()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mixed_adapter_batch_equals_each_row_alone(arch):
    """Rows of one batch may each run a different adapter (or none) and get what they would alone."""
    from lorakit.adapters import adapter_rows

    model = tiny_model(arch)
    add_adapter(model, _config(arch, "lora"), "a")
    add_adapter(model, _config(arch, "dora"), "b")
    randomize_adapter(model, "a", seed=1)
    randomize_adapter(model, "b", seed=2)
    inputs = tiny_inputs(arch, batch=4)
    rows = ["b", None, "a", "b"]
    with adapter_rows(model, rows):
        mixed = output_of(model, inputs)
    for i, name in enumerate(rows):
        one = {k: v[i : i + 1] for k, v in inputs.items()}
        if name is None:
            with disable_adapters(model):
                alone = output_of(model, one)
        else:
            set_adapter(model, name)
            alone = output_of(model, one)
        assert (mixed[i] - alone[0]).abs().max() <= 1e-5, (i, name)
