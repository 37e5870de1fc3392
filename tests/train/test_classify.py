"""`lorakit train --task classify` on a tiny BERT and a tiny llama with a score head: the loss falls,
resume equals the uninterrupted run, dynamic padding changes no logit, the adapter is PEFT's, the
in-run evaluation is what an independent scorer finds, and bad input is refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from lorakit.classifier import load_classifier
from lorakit.errors import LorakitError
from lorakit.train.classify import logits_of
from lorakit.train.classify_batches import (ClassifyBatches, Example, bucketed_batches, load_examples,
                                            padded_examples, read_report)
from lorakit.train.config import TrainConfig
from lorakit.train.progress import read_metrics
from lorakit.train.run import run_training
from tests.train.classify_data import CLASSES, prepare, save_tiny, write_records
from tests.train.conftest import write_dataset

ARCHS = ("bert", "llama")
TOL = 1e-5


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Tiny BERT and llama folders and one classification dataset both can read."""
    root = tmp_path_factory.mktemp("classify")
    for arch in ARCHS:
        save_tiny(arch, root / arch)
    prepare(write_records(root / "records.jsonl"), root / "data", root / "bert")
    return root


def _cfg(root, arch, out, **kw) -> TrainConfig:
    base = dict(model=str(root / arch), data=str(root / "data"), out=str(out), task="classify", batch_size=8,
                max_steps=8, lr=1e-2, warmup=0, schedule="constant", rank=4, seed=0, progress=False, threads=1,
                precision="fp32", max_seq_len=64)
    return TrainConfig(**{**base, **kw})


def _losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


@pytest.fixture(scope="module")
def trained(root):
    """One LoRA run per architecture, 60 steps, evaluated every 20."""
    for arch in ARCHS:
        run_training(_cfg(root, arch, root / f"run-{arch}", max_steps=60, eval_every=20))
    return {arch: root / f"run-{arch}" for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_training_on_a_separable_task_drives_the_loss_down(trained, arch):
    """A wide margin, not a recorded curve: the last ten steps' mean loss is under 0.6 of the
    first ten's (measured: about 0.3 on both models)."""
    losses = _losses(trained[arch])
    assert len(losses) == 60
    steps = [r for r in read_metrics(trained[arch] / "metrics.jsonl") if "loss" in r]
    # throughput counts the tokens fed, not the one label per example the loss is averaged over
    assert all(r["tokens"] == 8 and r["input_tokens_per_s"] > 2 * r["tokens_per_s"] for r in steps)
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10, losses


@pytest.mark.parametrize("arch", ARCHS)
def test_metrics_and_the_best_adapter_by_accuracy(trained, arch):
    out = trained[arch]
    evals = [r for r in read_metrics(out / "metrics.jsonl") if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [20, 40, 60]
    assert all({"eval_loss", "eval_macro_f1", "eval_examples"} <= set(r) for r in evals)
    best = json.loads((out / "best" / "best.json").read_text())
    top = max(r["eval_accuracy"] for r in evals)
    first_top = next(r for r in evals if r["eval_accuracy"] == top)
    assert best["eval_accuracy"] == top and best["step"] == first_top["step"]
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS" and saved["modules_to_save"]
    assert (out / "best" / "adapter_model.safetensors").is_file()


def _peft_model(folder, adapter):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(CLASSES), dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter).eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_the_trained_adapter_loads_in_peft_and_the_run_evaluated_what_peft_scores(root, trained, arch):
    """PEFT reads the saved adapter to lorakit's logits (padded batches), and scoring valid.jsonl one
    unpadded text at a time through PEFT (tokenized from the text by the model's tokenizer) gives
    the accuracy and loss the run's last evaluation logged."""
    from lorakit.adapters import load_adapter

    folder, out = root / arch, trained[arch]
    theirs = _peft_model(folder, out)
    ours, tok = load_classifier(folder, list(CLASSES))
    load_adapter(ours, out)
    report = read_report(root / "data")
    valid, _ = load_examples(root / "data" / "valid.jsonl", report, tok, 64)
    batch = padded_examples(valid[:8], 0)
    assert int(batch["attention_mask"].sum()) < batch["attention_mask"].numel()  # really padded
    with torch.no_grad():
        assert (theirs(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
                - logits_of(ours, batch)).abs().max().item() <= TOL
    rows = [json.loads(line) for line in (root / "data" / "valid.jsonl").read_text().splitlines()]
    right, loss = 0, 0.0
    with torch.no_grad():
        for row in rows:
            logits = theirs(**tok(row["text"], return_tensors="pt")).logits[0]
            truth = CLASSES.index(row["label"])
            right += int(logits.argmax()) == truth
            loss += float(torch.nn.functional.cross_entropy(logits[None], torch.tensor([truth])))
    last = [r for r in read_metrics(out / "metrics.jsonl") if "eval_accuracy" in r][-1]
    assert last["eval_examples"] == len(rows)
    assert last["eval_accuracy"] == right / len(rows)
    assert last["eval_loss"] == pytest.approx(loss / len(rows), rel=1e-4)


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(root, tmp_path):
    """On the llama classifier, with LoRA dropout and the speed plan's fused and lean layers: the
    adapter (head included), the losses and the best adapter's step are the uninterrupted run's."""
    kw = dict(save_every=4, keep_checkpoints=5, eval_every=2, dropout=0.1)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_training(_cfg(root, "llama", full, **kw))
    run_training(_cfg(root, "llama", resumed, resume=str(full / "checkpoints" / "step-000004"), **kw))
    a, b = (load_file(d / "adapter_model.safetensors") for d in (full, resumed))
    assert a.keys() == b.keys() and "base_model.model.score.weight" in a  # the new head, trained in full
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(full)[4:] == _losses(resumed)[-4:]
    best = json.loads((full / "best" / "best.json").read_text())
    if best["step"] > 4:  # found after the checkpoint: the resumed run finds the same one
        assert json.loads((resumed / "best" / "best.json").read_text())["step"] == best["step"]
    else:  # found before it: the resumed run knows it and writes no worse one
        assert not (resumed / "best").exists()


@pytest.mark.parametrize("method", ["head", "full"])
def test_head_trains_the_classifier_head_alone_and_full_everything(root, tmp_path, method):
    out = tmp_path / method
    run_training(_cfg(root, "bert", out, method=method, max_steps=3, lr=1e-3))
    before, after = load_file(root / "bert" / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if method == "head":
        assert changed == {"classifier.weight", "classifier.bias"}
    else:
        assert {"classifier.weight", "bert.embeddings.word_embeddings.weight"} <= changed
    assert json.loads((out / "config.json").read_text())["id2label"] == {str(i): c for i, c in enumerate(CLASSES)}


@pytest.fixture(scope="module")
def bert_classifier(root):
    return load_classifier(root / "bert", list(CLASSES))[0]


@pytest.fixture(scope="module")
def llama_classifier(root):
    return load_classifier(root / "llama", list(CLASSES))[0]


@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=2, max_size=6), seed=st.integers(0, 2**16))
def test_a_padded_batch_gives_each_rows_unpadded_logits(bert_classifier, llama_classifier, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    examples = [Example(torch.randint(4, 96, (n,), generator=g).tolist(), 0) for n in lengths]
    batch = padded_examples(examples, pad_id=0)
    assert batch["input_ids"].shape[1] == max(lengths)  # no column past the longest row
    for model in (bert_classifier, llama_classifier):
        with torch.no_grad():
            together = logits_of(model, batch)
            for row, e in enumerate(examples):
                alone = logits_of(model, padded_examples([e], pad_id=0))
                assert (together[row] - alone[0]).abs().max().item() <= TOL


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 60), min_size=1, max_size=200), batch=st.integers(1, 9),
       seed=st.integers(0, 100), epoch=st.integers(0, 3))
def test_bucketing_covers_an_epoch_once_and_pads_no_more_than_unsorted_batches(lengths, batch, seed, epoch):
    """Each epoch's batches hold whole batches of distinct examples, every example but a tail of
    fewer than a batch; sorting within windows never computes more padded tokens than cutting the
    same shuffled order without sorting (the sorted cut minimises each window's sum of maxima)."""
    from lorakit.train.batches import epoch_order

    batches = bucketed_batches(lengths, batch, seed, epoch)
    flat = [i for b in batches for i in b]
    assert all(len(b) == batch for b in batches) and len(flat) == len(set(flat)) == len(lengths) // batch * batch
    assert batches == bucketed_batches(lengths, batch, seed, epoch)  # a pure function of (seed, epoch)
    order = epoch_order(len(lengths), seed, epoch)[:len(flat)]
    unsorted = sum(max(lengths[i] for i in order[s:s + batch]) * batch for s in range(0, len(order), batch))
    assert sum(max(lengths[i] for i in b) * batch for b in batches) <= unsorted


def test_the_batches_resume_where_they_stopped(root):
    report = read_report(root / "data")
    tok = load_classifier(root / "bert", list(CLASSES), with_tokenizer=True)[1]
    examples, _ = load_examples(root / "data" / "train.jsonl", report, tok, 64)
    first = ClassifyBatches(examples, 8, seed=3, pad_id=0)
    run = [next(first) for _ in range(25)]  # past an epoch's end
    again = ClassifyBatches(examples, 8, seed=3, pad_id=0)
    again.load_state({"epoch": 0, "index": 7})
    for want in run[7:]:
        got = next(again)
        assert all(torch.equal(want[k], got[k]) for k in want)
    assert tok("the")["input_ids"][0] == 2 and examples[0].ids[0] == 2 and examples[0].ids[-1] == 3  # [CLS] .. [SEP]


# --- bad input: one line, nothing written ---

def _refused(cfg: TrainConfig, match: str) -> None:
    with pytest.raises(LorakitError, match=match) as err:
        run_training(cfg)
    assert "\n" not in str(err.value)
    assert not Path(cfg.out).exists()


def test_a_classification_dataset_is_refused_by_a_language_model_run(root, tmp_path):
    _refused(_cfg(root, "llama", tmp_path / "out", task="lm"), "is a classification dataset.*--task classify")
    rows_only = tmp_path / "rows"  # no report.json: the rows say it
    rows_only.mkdir()
    shutil.copy(root / "data" / "train.jsonl", rows_only / "train.jsonl")
    _refused(_cfg(root, "llama", tmp_path / "out", task="lm", data=str(rows_only)), "is a classification dataset")


def test_a_language_model_dataset_is_refused_by_a_classification_run(root, tmp_path):
    lm = write_dataset(tmp_path / "lm")
    _refused(_cfg(root, "bert", tmp_path / "out", data=str(lm)), "has no report.json.*--task classify")
    (lm / "report.json").write_text(json.dumps({"version": 1, "splits": {}}))
    _refused(_cfg(root, "bert", tmp_path / "out", data=str(lm)), "is a language-model dataset")


def test_rows_that_are_not_this_datasets_classes_are_refused_naming_the_line(root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    rows = (data / "train.jsonl").read_text().splitlines()
    bad = json.loads(rows[2])
    bad["label"] = "delta"
    (data / "train.jsonl").write_text("\n".join(rows[:2] + [json.dumps(bad)] + rows[3:]) + "\n")
    _refused(_cfg(root, "bert", tmp_path / "out", data=str(data)), r"train.jsonl line 3: label 'delta' is not one")
    del bad["task"]
    (data / "train.jsonl").write_text("\n".join(rows[:2] + [json.dumps(bad)] + rows[3:]) + "\n")
    _refused(_cfg(root, "bert", tmp_path / "out", data=str(data)), r"line 3: not a classification row")


@pytest.mark.parametrize("settings_, match", [
    ({"method": "qlora"}, "qlora --task classify"), ({"packing": True}, "--packing applies to --task lm"),
    ({"mask_prompt": True}, "--mask-prompt applies to --task lm"), ({"task": "regress"}, "--task 'regress'")])
def test_settings_a_classification_run_cannot_take_are_refused(root, tmp_path, settings_, match):
    with pytest.raises(LorakitError, match=match) as err:
        _cfg(root, "bert", tmp_path / "out", **settings_)
    assert "\n" not in str(err.value)


def test_a_classification_adapter_is_refused_by_generate(root, trained, capsys):
    from lorakit.cli import main

    assert main(["generate", "--model", str(root / "llama"), "--adapter", str(trained["llama"]),
                 "--prompt", "w5 w6", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "sequence-classification adapter" in err and "load_classifier" in err


def test_batch_size_and_lr_left_unset_take_the_tasks_own_and_given_ones_win(tmp_path):
    """A classification run fills a bigger batch of its short rows by default, full fine-tuning a
    smaller rate than an adapter; anything given (flag or YAML) is kept as given."""
    lm, cls = TrainConfig(), TrainConfig(task="classify")
    assert cls.batch_size > lm.batch_size
    assert TrainConfig(task="classify", method="full").lr < cls.lr
    (tmp_path / "c.yaml").write_text("lr: 0.003\nbatch_size: 3\n")
    resolved = TrainConfig.resolve(str(tmp_path / "c.yaml"), {"task": "classify", "method": "full"})
    assert (resolved.lr, resolved.batch_size) == (0.003, 3)
    assert TrainConfig.resolve(str(tmp_path / "c.yaml"), {"task": "classify", "lr": 0.5}).lr == 0.5
