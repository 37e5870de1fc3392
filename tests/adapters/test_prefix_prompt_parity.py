"""Prefix and prompt tuning equal PEFT's: logits and gradients on a padded batch, files both ways,
greedy decoding with the prefix."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft import PrefixTuningConfig as PeftPrefix
from peft import PromptTuningConfig as PeftPrompt
from safetensors.torch import load_file

from lorakit.adapters import (
    PrefixTuningConfig,
    PromptTuningConfig,
    add_prefix_tuning,
    add_prompt_tuning,
    load_adapter,
    save_virtual_adapter,
    virtual_positions,
)
from tests.conftest import tiny_model

ARCHS = ("llama", "qwen2", "gemma3", "gpt2")  # qwen2 and llama: 2 KV heads for 4 query heads
METHODS = ("prefix", "prefix-projection", "prompt-random", "prompt-text")
N, TOL = 3, 1e-5
INIT_TEXT = "tell"  # one word: with the tokenizer's <s>, two ids, repeated to N


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A word-level tokenizer whose ids fit the tiny models' vocabulary, saved as AutoTokenizer reads it."""
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "tell": 40, "a": 41, "story": 42}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    out = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", unk_token="<unk>", pad_token="<pad>").save_pretrained(out)
    return str(out)


def _configs(method: str, tok: str):
    """(PEFT's config, lorakit's) for one method, the same settings."""
    if method.startswith("prefix"):
        proj = method == "prefix-projection"
        return (PeftPrefix(task_type="CAUSAL_LM", num_virtual_tokens=N, prefix_projection=proj,
                           encoder_hidden_size=10 if proj else None),
                PrefixTuningConfig(num_virtual_tokens=N, prefix_projection=proj, encoder_hidden_size=10 if proj else None))
    if method == "prompt-text":
        return (PeftPrompt(task_type="CAUSAL_LM", num_virtual_tokens=N, prompt_tuning_init="TEXT",
                           prompt_tuning_init_text=INIT_TEXT, tokenizer_name_or_path=tok),
                PromptTuningConfig(num_virtual_tokens=N, init="text", init_text=INIT_TEXT, tokenizer_name_or_path=tok))
    return PeftPrompt(task_type="CAUSAL_LM", num_virtual_tokens=N), PromptTuningConfig(num_virtual_tokens=N)


def _attach(model, config, **kw):
    add = add_prefix_tuning if isinstance(config, PrefixTuningConfig) else add_prompt_tuning
    return add(model, config, **kw)


def _batch():
    """Two rows, the second left-padded; the labels skip the padding."""
    ids = torch.randint(1, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def _run(model, params: dict):
    """Logits, loss and the gradient of each trainable tensor (by PEFT's local name)."""
    model.train()
    model.zero_grad()
    out = model(**_batch())
    out.loss.backward()
    return out.logits.detach(), out.loss.detach(), {n: p.grad.clone() for n, p in params.items()}


def _assert_close(a, b):
    assert a.shape == b.shape and (a - b).abs().max().item() <= TOL


def _peft_params(peft_model):
    return {n: p for n, p in peft_model.prompt_encoder["default"].named_parameters() if p.requires_grad}


def _base_logits(arch):
    with torch.no_grad():
        batch = _batch()
        return tiny_model(arch)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_same_init_logits_and_gradients_as_peft(arch, method, tokenizer_dir):
    peft_cfg, ours_cfg = _configs(method, tokenizer_dir)
    theirs_base, ours = tiny_model(arch), tiny_model(arch)
    torch.manual_seed(5)
    theirs = get_peft_model(theirs_base, peft_cfg)
    torch.manual_seed(5)
    record = _attach(ours, ours_cfg)
    # one seed, one text: the same initial tensors (names and creation order are PEFT's)
    theirs_state = theirs.prompt_encoder["default"].state_dict()
    assert theirs_state.keys() == record.encoder.state_dict().keys()
    for name, tensor in record.encoder.state_dict().items():
        assert torch.equal(tensor, theirs_state[name]), name
    # the trainable tensors are exactly PEFT's
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == {f"lorakit_prompt.{n}" for n in _peft_params(theirs)}

    logits, loss, grads = _run(ours, dict(record.encoder.named_parameters()))
    peft_logits, peft_loss, peft_grads = _run(theirs, _peft_params(theirs))
    _assert_close(logits, peft_logits)
    _assert_close(loss, peft_loss)
    for name, grad in peft_grads.items():
        assert grad.abs().max() > 0, name
        _assert_close(grads[name], grad)
    # the adapter changes the text's logits, so the comparison means something
    assert (logits[:, virtual_positions(ours):] - _base_logits(arch)).abs().max().item() > 1e-3

    # lorakit's trainer path: the backbone's hidden states through the head, virtual positions dropped
    batch = _batch()
    with torch.no_grad():
        hidden = ours.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 use_cache=False).last_hidden_state
        head = ours.get_output_embeddings()(hidden[:, virtual_positions(ours):])
    cap = getattr(ours.config, "final_logit_softcapping", None)
    head = torch.tanh(head / cap) * cap if cap else head
    _assert_close(head, peft_logits[:, peft_logits.shape[1] - batch["input_ids"].shape[1]:])


def _saved(folder):
    config = json.loads((folder / "adapter_config.json").read_text())
    for key in ("peft_version", "auto_mapping"):  # what PEFT stamps on its own files
        config.pop(key, None)
    return config, load_file(folder / "adapter_model.safetensors")


def _assert_same_files(a, b):
    (config_a, tensors_a), (config_b, tensors_b) = _saved(a), _saved(b)
    assert config_a == config_b
    assert tensors_a.keys() == tensors_b.keys() == {"prompt_embeddings"}
    assert torch.equal(tensors_a["prompt_embeddings"], tensors_b["prompt_embeddings"])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_lorakit_saves_peft_loads(arch, method, tokenizer_dir, tmp_path):
    _, ours_cfg = _configs(method, tokenizer_dir)
    ours = tiny_model(arch)
    record = _attach(ours, ours_cfg)
    logits, _, grads = _run(ours, dict(record.encoder.named_parameters()))
    save_virtual_adapter(ours, tmp_path / "ours")

    # PEFT loads prompt-learning adapters to run only (is_trainable is refused); the gradient of its
    # loaded tensor is still the gradient of the prefix the model uses
    theirs = PeftModel.from_pretrained(tiny_model(arch), tmp_path / "ours")
    loaded = theirs.prompt_encoder["default"].embedding.weight.requires_grad_(True)
    peft_logits, _, peft_grads = _run(theirs, {"embedding.weight": loaded})
    _assert_close(peft_logits, logits)
    if method != "prefix-projection":  # there PEFT holds the MLP's output, lorakit the MLP
        _assert_close(peft_grads["embedding.weight"], grads["embedding.weight"])
    theirs.save_pretrained(tmp_path / "peft")  # PEFT writes back what it read: the same two files
    _assert_same_files(tmp_path / "ours", tmp_path / "peft")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_peft_saves_lorakit_loads(arch, method, tokenizer_dir, tmp_path):
    peft_cfg, _ = _configs(method, tokenizer_dir)
    torch.manual_seed(7)
    theirs = get_peft_model(tiny_model(arch), peft_cfg)
    peft_logits, _, peft_grads = _run(theirs, _peft_params(theirs))
    theirs.save_pretrained(tmp_path / "peft")

    projection = method == "prefix-projection"
    ours = tiny_model(arch)
    record = load_adapter(ours, tmp_path / "peft", trainable=not projection)  # lorakit's one adapter loader
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == (
        set() if projection else {"lorakit_prompt.embedding.weight"})
    if projection:
        ours.eval()
        with torch.no_grad():
            _assert_close(ours(**_batch()).logits, peft_logits)
    else:
        logits, _, grads = _run(ours, dict(record.encoder.named_parameters()))
        _assert_close(logits, peft_logits)
        _assert_close(grads["embedding.weight"], peft_grads["embedding.weight"])
    save_virtual_adapter(ours, tmp_path / "ours")
    _assert_same_files(tmp_path / "peft", tmp_path / "ours")


def _greedy_full(model, ids, mask, steps: int, positions: bool):
    """Greedy tokens from full forwards over the whole text each step (no cache); `positions`: pass
    position ids counted over the mask, as `generate` makes them."""
    for _ in range(steps):
        extra = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)} if positions else {}
        with torch.no_grad():
            nxt = model(input_ids=ids, attention_mask=mask, **extra).logits[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids[:, -steps:]


def _greedy_cached(model, ids, mask, steps: int):
    """Greedy tokens decoding one token a step from a KV cache (the prefix goes in on the first step)."""
    from transformers import DynamicCache

    cache, step, out = DynamicCache(config=model.config), ids, []
    for _ in range(steps):
        with torch.no_grad():
            nxt = model(input_ids=step, attention_mask=mask, cache=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        step, mask = nxt, torch.cat([mask, torch.ones_like(nxt)], 1)
    return torch.cat(out, 1)


@pytest.mark.parametrize("projection", [False, True], ids=["prefix", "prefix-projection"])
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_decoding_with_the_prefix_equals_peft(arch, projection):
    """PEFT 0.21's own `generate` loses the prefix under transformers 5 (it passes `past_key_values`
    beside the `cache` generate made, and the model keeps the latter), so the oracle is PEFT's forward,
    run over the whole text at every step."""
    theirs = get_peft_model(tiny_model(arch), PeftPrefix(task_type="CAUSAL_LM", num_virtual_tokens=N,
                                                         prefix_projection=projection)).eval()
    with torch.no_grad():  # a strong prefix, so that the greedy tokens are the prefix's, not the base's
        for p in theirs.prompt_encoder.parameters():
            p.mul_(30)
    ours = copy.deepcopy(tiny_model(arch))
    record = add_prefix_tuning(ours, PrefixTuningConfig(num_virtual_tokens=N, prefix_projection=projection))
    record.encoder.load_state_dict(theirs.prompt_encoder["default"].state_dict())
    ours.eval()
    batch = _batch()
    ids, mask = batch["input_ids"][:, :5], batch["attention_mask"][:, :5]

    expected = _greedy_full(theirs, ids, mask, 6, positions=False)
    assert torch.equal(_greedy_cached(ours, ids, mask, 6), expected)
    assert not torch.equal(expected, _greedy_full(tiny_model(arch), ids, mask, 6, positions=False))
    # transformers' generate on the model with lorakit's prefix (position ids from the mask)
    generated = ours.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(generated[:, -6:], _greedy_full(theirs, ids, mask, 6, positions=True))
