"""lorakit's adapters equal PEFT's: same logits and gradients, and each loads the other's files."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model

from lorakit.adapters import LoraConfig, adapter_layers, add_adapter, load_adapter, save_adapter, set_trainable
from tests.adapters.helpers import randomize_adapter
from tests.conftest import output_of, tiny_inputs, tiny_model

# (arch, target_modules, modules_to_save)
CASES = [
    ("llama", "all-linear", None),
    ("llama", ["q_proj", "v_proj", "embed_tokens"], None),
    ("qwen2", "all-linear", None),
    ("mistral", "all-linear", None),
    ("gemma", "all-linear", None),
    ("gemma3", ["q_proj", "down_proj", "embed_tokens"], None),
    ("phi3", "all-linear", None),
    ("gpt2", "all-linear", None),
    ("bert", ["query", "value", "attention.output.dense"], ["classifier"]),
    ("qwen3", "all-linear", None),
    ("smollm3", "all-linear", None),
    ("gemma2", "all-linear", None),
    ("gemma3-multimodal", ["q_proj", "v_proj", "down_proj"], None),
    ("roberta", ["query", "value"], ["classifier"]),
    ("distilbert", ["q_lin", "v_lin", "lin1"], ["pre_classifier", "classifier"]),
]
VARIANTS = {"lora": {}, "rslora": {"use_rslora": True}, "dora": {"use_dora": True}}
TOL = 1e-5


def _ids(case):
    arch, targets, _ = case
    return f"{arch}-{'all' if targets == 'all-linear' else '+'.join(targets)}"


def _peft_config(targets, save, variant) -> PeftLoraConfig:
    return PeftLoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, modules_to_save=save,
                          init_lora_weights=False, **VARIANTS[variant])


def _perturb_saved(model, seed=3):
    """Train the classifier copy a little, so the saved head differs from the base head."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".modules_to_save." in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_lorakit_save_loads_in_peft_with_equal_logits(case, variant, tmp_path):
    arch, targets, save = case
    ours = tiny_model(arch)
    base_copy = copy.deepcopy(ours)
    add_adapter(ours, LoraConfig(r=4, alpha=8, target_modules=targets, modules_to_save=save, **VARIANTS[variant]))
    randomize_adapter(ours)
    _perturb_saved(ours)
    inputs = tiny_inputs(arch)
    expected = output_of(ours, inputs)
    save_adapter(ours, tmp_path)

    theirs = PeftModel.from_pretrained(base_copy, tmp_path).eval()
    got = output_of(theirs, inputs)
    assert (got - expected).abs().max().item() <= TOL
    # the adapter really changes the output, so the comparison means something
    assert (expected - output_of(tiny_model(arch), inputs)).abs().max().item() > 1e-3


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_peft_save_loads_in_lorakit_with_equal_logits(case, variant, tmp_path):
    arch, targets, save = case
    torch.manual_seed(5)
    theirs = get_peft_model(tiny_model(arch), _peft_config(targets, save, variant)).eval()
    _perturb_saved(theirs)
    with torch.no_grad():  # DoRA magnitudes start at ||W||; move them so they are really read
        for name, p in theirs.named_parameters():
            if name.endswith("lora_magnitude_vector.default.weight"):
                p.mul_(1 + 0.1 * torch.randn_like(p))
    inputs = tiny_inputs(arch)
    expected = output_of(theirs, inputs)
    theirs.save_pretrained(tmp_path)

    ours = tiny_model(arch)
    load_adapter(ours, tmp_path)
    got = output_of(ours, inputs)
    assert (got - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gradients_equal_peft(arch, variant, tmp_path):
    """Same loss gradient for every adapter weight (DoRA's detached norm included)."""
    ours = tiny_model(arch)
    base_copy = copy.deepcopy(ours)
    add_adapter(ours, LoraConfig(r=4, alpha=8, target_modules="all-linear", **VARIANTS[variant]))
    randomize_adapter(ours)
    save_adapter(ours, tmp_path)
    theirs = PeftModel.from_pretrained(base_copy, tmp_path, is_trainable=True)
    set_trainable(ours, "default")
    inputs = tiny_inputs(arch)
    grads = []
    for model in (ours, theirs):
        model.train()
        model.zero_grad()
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        grads.append({n.replace(".default", "").removeprefix("base_model.model."): p.grad
                      for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, g in grads[0].items():
        assert (g - grads[1][name]).abs().max().item() <= TOL, name


# per-module ranks and alphas: a suffix, a regex over one layer's module, and a key naming a module
# the targets leave out (it must change nothing)
PATTERNS = {"rank_pattern": {"v_proj": 2, r"layers\.1\.mlp\.down_proj": 6, "k_proj": 3},
            "alpha_pattern": {"down_proj": 3.0, "o_proj": 12.0}}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rank_and_alpha_patterns_equal_peft_both_ways(variant, tmp_path):
    targets = ["q_proj", "v_proj", "o_proj", "down_proj", "embed_tokens"]
    torch.manual_seed(7)
    theirs = get_peft_model(tiny_model("llama"), PeftLoraConfig(
        r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, **PATTERNS, **VARIANTS[variant])).eval()
    inputs = tiny_inputs("llama")
    expected = output_of(theirs, inputs)
    theirs.save_pretrained(tmp_path / "peft")
    ours = tiny_model("llama")
    load_adapter(ours, tmp_path / "peft")
    assert (output_of(ours, inputs) - expected).abs().max().item() <= TOL
    ranks = {name.rsplit(".", 1)[-1]: layer.r["default"] for name, layer in adapter_layers(ours)}
    assert ranks["v_proj"] == 2 and ranks["q_proj"] == 4 and sorted({ranks["down_proj"], 4}) == [4, 6]

    fresh = tiny_model("llama")
    add_adapter(fresh, LoraConfig(r=4, alpha=8, target_modules=targets, **PATTERNS, **VARIANTS[variant]))
    randomize_adapter(fresh)
    mine = output_of(fresh, inputs)
    save_adapter(fresh, tmp_path / "ours")
    back = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "ours").eval()
    assert (output_of(back, inputs) - mine).abs().max().item() <= TOL
