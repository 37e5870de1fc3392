"""Prefix and prompt tuning on sequence classifiers (PEFT's SEQ_CLS prompt learning): the head
trains beside the virtual tokens, logits and gradients equal PEFT's, files both ways, and each
row of a padded batch is classified as it is alone."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft import PrefixTuningConfig as PeftPrefix
from peft import PromptTuningConfig as PeftPrompt
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

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
from lorakit.errors import AdapterLoadError
from tests.conftest import tiny_model

ARCHS = ("bert", "llama", "qwen2", "gemma3", "gpt2")  # an encoder, decoders (qwen2, llama: GQA)
METHODS = ("prefix", "prompt")
K, N, PAD, TOL = 3, 3, 0, 1e-5


def _classifier(arch: str, labels: int = K):
    """Tiny `arch` as a sequence classifier with a random head, pad id set (seeded: two calls equal)."""
    config = copy.deepcopy(tiny_model(arch).config)
    config.num_labels, config.pad_token_id = labels, PAD
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


def _configs(method: str):
    if method == "prefix":
        return PeftPrefix(task_type="SEQ_CLS", num_virtual_tokens=N), PrefixTuningConfig(num_virtual_tokens=N)
    return PeftPrompt(task_type="SEQ_CLS", num_virtual_tokens=N), PromptTuningConfig(num_virtual_tokens=N)


def _attach(model, config, **kw):
    add = add_prefix_tuning if isinstance(config, PrefixTuningConfig) else add_prompt_tuning
    return add(model, config, **kw)


def _batch(padding: str) -> dict[str, torch.Tensor]:
    """Two rows of 7 tokens, the second with 3 pads on the `padding` side (none for "none")."""
    ids = torch.randint(1, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if padding != "none":
        cols = slice(0, 3) if padding == "left" else slice(4, 7)
        ids[1, cols], mask[1, cols] = PAD, 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 2])}


def _peft_logits(peft_model, batch):
    """PEFT's logits. Its prefix forward for SEQ_CLS checks the model's signature for
    `past_key_values`, which transformers 5 renamed `cache`, and refuses; then its prefix
    (`get_prompt`) goes to the model as `_prefix_tuning_forward` hands it over."""
    try:
        return peft_model(**batch).logits
    except ValueError:
        mask = batch["attention_mask"]
        mask = torch.cat((torch.ones(mask.shape[0], N, dtype=mask.dtype), mask), dim=1)
        rows = batch["input_ids"].shape[0]
        return peft_model.base_model(input_ids=batch["input_ids"], attention_mask=mask,
                                     cache=peft_model.get_prompt(batch_size=rows)).logits


def _run(model, params: dict, batch, peft: bool = False):
    """Logits, cross-entropy and the gradient of each trainable tensor."""
    model.train()
    model.zero_grad()
    for m in model.modules():  # dropout off (BERT's): the comparison is of the arithmetic
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    logits = _peft_logits(model, batch) if peft else model(input_ids=batch["input_ids"],
                                                          attention_mask=batch["attention_mask"]).logits
    loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in params.items()}


def _close(a, b):
    assert a.shape == b.shape and (a - b).abs().max().item() <= TOL


def _padding(arch: str) -> str:
    """The padding under which PEFT's own pooling reads a real token: an encoder pools position 0
    (any padding), a decoder given inputs_embeds pools the last position (left padding)."""
    return "right" if arch == "bert" else "left"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_and_gradients_equal_peft(arch, method):
    peft_cfg, ours_cfg = _configs(method)
    theirs_base, ours = _classifier(arch), _classifier(arch)
    torch.manual_seed(5)
    theirs = get_peft_model(theirs_base, peft_cfg)
    torch.manual_seed(5)
    record = _attach(ours, ours_cfg)
    assert record.task == "SEQ_CLS" and record.heads
    # what trains: PEFT's prompt encoder and its copy of the head, under the same local names
    peft_params = {n.removeprefix("base_model.").replace("prompt_encoder.default.", "lorakit_prompt."): p
                   for n, p in theirs.named_parameters() if p.requires_grad}
    ours_params = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    assert ours_params.keys() == peft_params.keys()
    for name, p in ours_params.items():
        assert torch.equal(p, peft_params[name]), name

    batch = _batch(_padding(arch))
    logits, grads = _run(ours, ours_params, batch)
    peft_logits, peft_grads = _run(theirs, peft_params, batch, peft=True)
    _close(logits, peft_logits)
    for name, grad in peft_grads.items():
        assert grad.abs().max() > 0, name
        _close(grads[name], grad)
    base = _classifier(arch).eval()
    with torch.no_grad():
        plain = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (logits - plain).abs().max() > 1e-4  # the virtual tokens change the answer


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_each_row_of_a_right_padded_batch_gets_peft_logits_of_the_row_alone(arch, method):
    peft_cfg, ours_cfg = _configs(method)
    theirs_base, ours = _classifier(arch), _classifier(arch)
    torch.manual_seed(5)
    theirs = get_peft_model(theirs_base, peft_cfg).eval()
    torch.manual_seed(5)
    _attach(ours, ours_cfg)
    ours.eval()
    batch = _batch("right")
    with torch.no_grad():
        together = ours(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for row, length in ((0, 7), (1, 4)):  # unpadded, PEFT pools the row's own last token
            alone = {"input_ids": batch["input_ids"][row:row + 1, :length],
                     "attention_mask": batch["attention_mask"][row:row + 1, :length]}
            _close(together[row:row + 1], _peft_logits(theirs, alone))


def _saved(folder):
    config = json.loads((folder / "adapter_config.json").read_text())
    for key in ("peft_version", "auto_mapping", "modules_to_save"):  # PEFT's stamps; its head list repeats names
        config.pop(key, None)
    return config, load_file(folder / "adapter_model.safetensors")


def _assert_same_files(a, b):
    (config_a, tensors_a), (config_b, tensors_b) = _saved(a), _saved(b)
    assert config_a == config_b and config_a["task_type"] == "SEQ_CLS"
    assert tensors_a.keys() == tensors_b.keys() and "prompt_embeddings" in tensors_a and len(tensors_a) > 1
    for key in tensors_a:
        assert torch.equal(tensors_a[key], tensors_b[key]), key


def _train_a_little(model):
    """Move the trained tensors off their start, so a file that lost the head would show."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_files_both_ways(arch, method, tmp_path):
    peft_cfg, ours_cfg = _configs(method)
    batch = _batch(_padding(arch))
    ours = _classifier(arch)
    _attach(ours, ours_cfg)
    _train_a_little(ours)
    ours.eval()
    with torch.no_grad():
        logits = ours(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    save_virtual_adapter(ours, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "labels.json").read_text())["id2label"]["2"] == "LABEL_2"

    theirs = PeftModel.from_pretrained(_classifier(arch), tmp_path / "ours").eval()
    with torch.no_grad():
        _close(_peft_logits(theirs, batch), logits)
    theirs.save_pretrained(tmp_path / "peft")
    _assert_same_files(tmp_path / "ours", tmp_path / "peft")

    again = _classifier(arch)
    load_adapter(again, tmp_path / "peft")  # lorakit's one adapter loader
    again.eval()
    with torch.no_grad():
        _close(again(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, logits)


def test_removing_the_adapter_gives_the_base_back():
    model, base = _classifier("llama"), _classifier("llama")
    _attach(model, PromptTuningConfig(num_virtual_tokens=N))
    remove_virtual_adapter(model)
    assert model.state_dict().keys() == base.state_dict().keys()
    batch = _batch("right")
    with torch.no_grad():
        _close(model(input_ids=batch["input_ids"]).logits, base(input_ids=batch["input_ids"]).logits)


@pytest.fixture
def saved_classifier_adapter(tmp_path):
    model = _classifier("llama")
    _attach(model, PromptTuningConfig(num_virtual_tokens=N))
    return save_virtual_adapter(model, tmp_path / "cls")


def _unchanged(model, before):
    assert virtual_adapter(model) is None
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_a_classifier_adapter_on_a_causal_lm_is_refused_in_one_line(saved_classifier_adapter):
    model = tiny_model("llama")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(AdapterLoadError, match=r"sequence-classification adapter .* cannot load onto LlamaForCausalLM") as err:
        load_adapter(model, saved_classifier_adapter)
    assert "\n" not in str(err.value)
    _unchanged(model, before)


def test_a_causal_lm_adapter_on_a_classifier_is_refused_in_one_line(tmp_path):
    lm = tiny_model("llama")
    add_prompt_tuning(lm, PromptTuningConfig(num_virtual_tokens=N))
    save_virtual_adapter(lm, tmp_path / "lm")
    model = _classifier("llama")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(AdapterLoadError, match=r"causal-LM adapter .* cannot load onto LlamaForSequenceClassification"):
        load_adapter(model, tmp_path / "lm")
    _unchanged(model, before)


def test_a_head_of_another_class_count_says_how_to_load_the_base(saved_classifier_adapter):
    model = _classifier("llama", labels=4)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(AdapterLoadError, match=r"head has 3 classes but the model's has 4; load the base with 3 labels"):
        load_adapter(model, saved_classifier_adapter)
    _unchanged(model, before)


def test_a_file_without_the_head_is_refused(saved_classifier_adapter):
    weights = saved_classifier_adapter / "adapter_model.safetensors"
    save_file({"prompt_embeddings": load_file(weights)["prompt_embeddings"]}, weights)
    model = _classifier("llama")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(AdapterLoadError, match=r"no base_model\.score\.weight"):
        load_adapter(model, saved_classifier_adapter)
    _unchanged(model, before)
