"""`lorakit eval --task classify`: its accuracy, macro-F1, per-class accuracy and confusion matrix are
what scoring each test text alone through PEFT (or plain transformers) gives; bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from lorakit.adapters import LoraConfig, save_adapter
from lorakit.classifier import load_classifier
from lorakit.cli import main
from tests.train.classify_data import CLASSES, prepare, save_tiny, write_records

ARCHS = ("bert", "llama")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Tiny BERT and llama folders, a classification dataset, a short LoRA run on each model
    (``adapter-ARCH``) and a short full fine-tuning run of BERT (``full-bert``): trained models
    whose answers spread over the classes, unlike a random one's."""
    from lorakit.train.config import TrainConfig
    from lorakit.train.run import run_training

    root = tmp_path_factory.mktemp("classify-eval")
    for arch in ARCHS:
        save_tiny(arch, root / arch)
    prepare(write_records(root / "records.jsonl", seed=5), root / "data", root / "bert")
    common = dict(data=str(root / "data"), task="classify", batch_size=8, warmup=0, schedule="constant", rank=4,
                  progress=False, threads=1, precision="fp32", max_seq_len=64)
    for arch in ARCHS:
        run_training(TrainConfig(model=str(root / arch), out=str(root / f"adapter-{arch}"), max_steps=40, lr=1e-2,
                                 **common))
    run_training(TrainConfig(model=str(root / "bert"), out=str(root / "full-bert"), method="full", max_steps=30,
                             lr=3e-3, **common))
    return root


def _direct(model, tok, rows) -> tuple[list[int], list[int]]:
    """(truth, prediction) for each row, its text tokenized alone, no padding."""
    truth, preds = [], []
    with torch.no_grad():
        for row in rows:
            truth.append(CLASSES.index(row["label"]))
            preds.append(int(model(**tok(row["text"], return_tensors="pt")).logits[0].argmax()))
    return truth, preds


def _check_against(result: dict, truth: list[int], preds: list[int]) -> None:
    k = len(CLASSES)
    matrix = [[sum(1 for t, p in zip(truth, preds) if (t, p) == (i, j)) for j in range(k)] for i in range(k)]
    assert result["confusion_matrix"] == matrix
    assert result["examples"] == len(truth)
    assert result["accuracy"] == sum(t == p for t, p in zip(truth, preds)) / len(truth)
    f1s = []
    for c in range(k):
        tp = sum(1 for t, p in zip(truth, preds) if t == p == c)
        fp = sum(1 for t, p in zip(truth, preds) if p == c and t != c)
        fn = sum(1 for t, p in zip(truth, preds) if t == c and p != c)
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    assert result["macro_f1"] == pytest.approx(sum(f1s) / len(f1s), abs=1e-12)
    for c, row in enumerate(result["per_class"]):
        n = truth.count(c)
        assert row["class"] == CLASSES[c] and row["examples"] == n
        assert row["accuracy"] == sum(1 for t, p in zip(truth, preds) if t == p == c) / n
    assert len(set(preds)) > 1  # trained: the answers spread over the classes, so the check is not vacuous


def _rows(root, split):
    return [json.loads(line) for line in (root / "data" / f"{split}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_of_an_adapter_is_the_direct_computation(root, arch, tmp_path, capsys):
    """No --model: the adapter's recorded base is loaded. The direct computation is PEFT's."""
    from peft import PeftModel

    from lorakit.models import load_tokenizer

    out = tmp_path / "result.json"
    assert main(["eval", "--task", "classify", "--adapter", str(root / f"adapter-{arch}"), "--data",
                 str(root / "data"), "--out", str(out), "--precision", "fp32", "--batch-size", "4"]) == 0
    result = json.loads(out.read_text())
    base = AutoModelForSequenceClassification.from_pretrained(root / arch, num_labels=len(CLASSES))
    peft = PeftModel.from_pretrained(base, root / f"adapter-{arch}").eval()
    _check_against(result, *_direct(peft, load_tokenizer(root / arch), _rows(root, "test")))
    printed = capsys.readouterr().out
    assert f"test: accuracy {result['accuracy']:.4f}" in printed and "confusion" in printed
    assert all(c in printed for c in CLASSES)


def test_eval_of_a_full_classifier_folder_on_another_split(root, tmp_path):
    out = tmp_path / "result.json"
    assert main(["eval", "--task", "classify", "--model", str(root / "full-bert"), "--data", str(root / "data"),
                 "--split", "valid", "--out", str(out), "--precision", "fp32"]) == 0
    result = json.loads(out.read_text())
    assert result["split"] == "valid"
    model = AutoModelForSequenceClassification.from_pretrained(root / "full-bert").eval()
    from lorakit.models import load_tokenizer

    _check_against(result, *_direct(model, load_tokenizer(root / "full-bert"), _rows(root, "valid")))


def _refused(argv: list[str], match: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("lorakit: error:"), err
    assert match in err, err


def test_bad_input_is_refused_in_one_line_and_nothing_is_written(root, tmp_path, capsys):
    from tests.train.conftest import write_dataset

    out = tmp_path / "result.json"
    data = ["--data", str(root / "data"), "--out", str(out)]
    lm = write_dataset(tmp_path / "lm")
    _refused(["eval", "--task", "classify", "--model", str(root / "full-bert"), "--data", str(lm), "--out", str(out)],
             "has no report.json", capsys)
    # a causal-LM adapter on the classifier
    from lorakit.adapters import add_adapter
    from tests.conftest import tiny_model

    lm_model = tiny_model("llama")
    add_adapter(lm_model, LoraConfig(r=2, target_modules=["q_proj"]))
    save_adapter(lm_model, tmp_path / "lm-adapter", base_model_name_or_path=str(root / "llama"))
    _refused(["eval", "--task", "classify", "--adapter", str(tmp_path / "lm-adapter"), *data],
             "a causal-LM adapter (task_type CAUSAL_LM) cannot load", capsys)
    _refused(["eval", "--task", "classify", "--adapter", f"a={root / 'adapter-bert'}",
              "--adapter", f"b={root / 'adapter-llama'}", *data], "at most one --adapter", capsys)
    _refused(["eval", "--split", "valid", "--data", str(root / "data")], "--split applies to --task classify", capsys)
    # a classifier trained on other classes, with as many outputs
    other, tok = load_classifier(root / "bert", ["x", "y", "z"])
    other.save_pretrained(tmp_path / "other")
    tok.save_pretrained(tmp_path / "other")
    _refused(["eval", "--task", "classify", "--model", str(tmp_path / "other"), *data],
             "classifies into x, y, z, not this dataset's classes", capsys)
    assert not out.exists()
