"""`lorakit train --task classify --method prefix|prompt` on a tiny BERT and a tiny llama with a score
head: the loss falls, only the virtual tokens and the head train, the saved SEQ_CLS adapter is what
PEFT reads to lorakit's logits, and `lorakit eval --task classify` scores it as the run did."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lorakit.classifier import load_classifier
from lorakit.eval.classify import run_classify_eval
from lorakit.train.classify import logits_of
from lorakit.train.classify_batches import load_examples, padded_examples, read_report
from lorakit.train.config import TrainConfig
from lorakit.train.progress import read_metrics
from lorakit.train.run import run_training
from tests.train.classify_data import CLASSES, prepare, save_tiny, write_records

ARCHS = ("bert", "llama")
METHODS = ("prefix", "prompt")
N, TOL = 4, 1e-5


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify-virtual")
    for arch in ARCHS:
        save_tiny(arch, root / arch)
    prepare(write_records(root / "records.jsonl"), root / "data", root / "bert")
    return root


def _cfg(root, arch, method, out, **kw) -> TrainConfig:
    base = dict(model=str(root / arch), data=str(root / "data"), out=str(out), task="classify", method=method,
                virtual_tokens=N, batch_size=8, max_steps=60, warmup=0, schedule="constant", seed=0,
                progress=False, threads=1, precision="fp32", max_seq_len=64, eval_every=60)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(root):
    runs = {}
    for arch in ARCHS:
        for method in METHODS:
            out = root / f"run-{arch}-{method}"
            run_training(_cfg(root, arch, method, out))
            runs[arch, method] = out
    return runs


def _losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_the_loss_falls_and_only_the_virtual_tokens_and_the_head_are_saved(root, trained, arch, method):
    out = trained[arch, method]
    losses = _losses(out)
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == f"{method.upper()}_TUNING" and config["task_type"] == "SEQ_CLS"
    assert config["num_virtual_tokens"] == N
    head = "classifier" if arch == "bert" else "score"
    tensors = load_file(out / "adapter_model.safetensors")
    assert {k for k in tensors if k != "prompt_embeddings"} == {k for k in tensors if k.startswith(f"base_model.{head}.")}
    assert f"base_model.{head}.weight" in tensors
    assert json.loads((out / "labels.json").read_text())["id2label"] == {str(i): c for i, c in enumerate(CLASSES)}


def _peft_logits(folder, adapter, batch):
    """PEFT's logits for the saved adapter: prompt tuning through its own forward; prefix tuning, which
    PEFT's SEQ_CLS forward refuses under transformers 5 (`cache`, not `past_key_values`), with
    PEFT's prefix handed to the model as its `_prefix_tuning_forward` does."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(CLASSES), dtype=torch.float32)
    theirs = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        try:
            return theirs(**batch).logits
        except ValueError:
            mask = batch["attention_mask"]
            mask = torch.cat((torch.ones(mask.shape[0], N, dtype=mask.dtype), mask), dim=1)
            return theirs.base_model(input_ids=batch["input_ids"], attention_mask=mask,
                                     cache=theirs.get_prompt(batch_size=mask.shape[0])).logits


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_peft_reads_the_saved_adapter_to_lorakits_logits(root, trained, arch, method):
    from lorakit.adapters import load_adapter

    out = trained[arch, method]
    ours, tok = load_classifier(root / arch, list(CLASSES), head_from_adapter=True)
    load_adapter(ours, out)
    valid, _ = load_examples(root / "data" / "valid.jsonl", read_report(root / "data"), tok, 60)
    # rows one at a time: PEFT's prompt-tuned decoder pools the last position, padding or not
    for example in valid[:4]:
        batch = padded_examples([example], 0)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            assert (_peft_logits(root / arch, out, inputs) - logits_of(ours, batch)).abs().max().item() <= TOL


@pytest.mark.parametrize("method", METHODS)
def test_eval_scores_the_adapter_as_the_run_last_did(root, trained, method):
    out = trained["llama", method]
    result = run_classify_eval(str(root / "llama"), out, str(root / "data"), split="valid", batch_size=8,
                               max_seq_len=64, threads=1, precision="fp32")
    last = [r for r in read_metrics(out / "metrics.jsonl") if "eval_accuracy" in r][-1]
    assert result["accuracy"] == last["eval_accuracy"]
