"""`lorakit eval --task classify`: how well a classifier labels one split of a classification dataset.

The classifier is `--model` loaded as a sequence classifier with the dataset's classes, and with
`--adapter` a SEQ_CLS adapter (`lorakit train --task classify`) on it; a `--method full|head`
run's folder is a model of its own (`--model RUN`). Every example of the split is scored, in
batches padded to their longest row, exactly as training evaluates: accuracy, macro-F1, accuracy
per class (the share of its examples given that class) and the confusion matrix (rows: the true
class, columns: the predicted one).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from lorakit.adapters import load_adapter, read_adapter_config, virtual_adapter
from lorakit.adapters.prompt_io import read_virtual_config, virtual_peft_type
from lorakit.atomic import atomic_write
from lorakit.classifier import has_classifier_head, load_classifier
from lorakit.errors import LorakitError
from lorakit.merge import recorded_base
from lorakit.models import DEFAULT_MODEL, resolve_model
from lorakit.train.classify import predict
from lorakit.train.classify_batches import fixed_batches, load_examples, max_length, read_report
from lorakit.train.classify_metrics import scores

log = logging.getLogger("lorakit")
SPLITS = ("train", "valid", "test")


def _check_own_labels(spec: str | None, classes: list[str]) -> None:
    """A classifier evaluated on its own head must have been trained on these classes, in this
    order: the same number of outputs under other names would be scored as if they were these."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(resolve_model(spec)))
    if not has_classifier_head(config):
        return
    names = [config.id2label.get(i, f"LABEL_{i}") for i in range(len(config.id2label))]
    if names != [f"LABEL_{i}" for i in range(len(names))] and names != classes:
        raise LorakitError(f"model '{spec}' classifies into {', '.join(names[:5])}, not this dataset's classes "
                           f"({', '.join(classes[:5])}); evaluate it on the dataset it was trained on")


def run_classify_eval(model_spec: str | None, adapter: str | os.PathLike | None, data_dir: str | os.PathLike, *,
                      split: str = "test", batch_size: int = 16, max_seq_len: int = 512, threads: int | None = None,
                      precision: str = "auto") -> dict:
    """Score the classifier on `split`; returns the result (what ``--out`` holds as JSON): accuracy,
    macro_f1, per_class, confusion_matrix, classes, examples, eval_loss (mean cross-entropy)."""
    from lorakit.runtime.device import set_threads
    from lorakit.runtime.precision import INFER_PRECISIONS, check_precision, hold_base_in

    if split not in SPLITS:
        raise LorakitError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    report = read_report(data_dir)  # an LM dataset is refused before anything loads
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise LorakitError(f"{path}: not found; re-run `lorakit data prepare --task classify` (it writes {path.name})")
    if adapter is not None:
        # one line naming the file when it is not an adapter
        read_virtual_config(adapter) if virtual_peft_type(adapter) else read_adapter_config(adapter)
    check_precision(precision, INFER_PRECISIONS)
    spec = model_spec or (recorded_base(adapter) if adapter is not None else None)
    if adapter is None:
        _check_own_labels(spec, report.classes)
    set_threads(threads)
    model, tok = load_classifier(spec, report.classes, head_from_adapter=adapter is not None)
    precision = hold_base_in(model, precision)
    if adapter is not None:
        load_adapter(model, adapter)  # refuses a causal-LM adapter, or a head of another class count
    record = virtual_adapter(model)  # a prefix/prompt adapter's virtual tokens take positions before the text
    limit = max_length(tok, max_seq_len, reserved=record.num_virtual_tokens if record is not None else 0)
    examples, stats = load_examples(path, report, tok, limit)
    if not examples:
        raise LorakitError(f"{path}: no examples; re-run `lorakit data prepare --task classify` with a larger "
                           f"--{'test' if split == 'test' else 'val'}-fraction")
    if stats.truncated:
        log.warning("%d examples were longer than %d tokens and were truncated", stats.truncated, limit)
    labels, preds, total = predict(model, fixed_batches(examples, batch_size, int(model.config.pad_token_id)))
    return {"model": str(spec or DEFAULT_MODEL), "adapter": None if adapter is None else str(adapter),
            "data": str(data_dir), "split": split, "precision": precision, "truncated": stats.truncated,
            "eval_loss": total / len(labels), **scores(labels, preds, report.classes)}


def _pct(value: float | None) -> str:
    return "    -" if value is None else f"{100 * value:5.1f}"


def format_result(result: dict) -> str:
    """The result as a user reads it: the headline, a line per class, the confusion matrix."""
    classes = result["classes"]
    width = max(len(c) for c in classes)
    lines = [f"{result['split']}: accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  "
             f"loss {result['eval_loss']:.4f}  ({result['examples']} examples)",
             f"  {'class':<{width}}  {'n':>6}  {'acc %':>5}  {'F1 %':>5}"]
    for row in result["per_class"]:
        lines.append(f"  {row['class']:<{width}}  {row['examples']:>6}  {_pct(row['accuracy'])}  {_pct(row['f1'])}")
    cell = max(5, len(str(max(max(r) for r in result["confusion_matrix"]))) + 1)
    lines.append("  confusion (rows: true class, columns: predicted, in the order above)")
    for name, row in zip(classes, result["confusion_matrix"]):
        lines.append(f"  {name:<{width}}  " + "".join(f"{n:>{cell}}" for n in row))
    return "\n".join(lines)


def write_result(result: dict, out: str | os.PathLike) -> Path:
    """`result` as JSON at `out`, atomically."""
    return atomic_write(Path(out), json.dumps(result, indent=1, ensure_ascii=False) + "\n")
