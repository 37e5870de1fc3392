"""`lorakit train --task classify`: the classifier, what trains, the loss, evaluation, the best weights.

The model is `--model` loaded as a sequence classifier (`lorakit.classifier.load_classifier`) with
one output per class of the dataset's report.json. What trains (`--method`): LoRA or DoRA with the
classifier head trained in full beside it (PEFT's SEQ_CLS adapter, saved by `save_adapter`), every
weight (full), or the classifier head alone (head). The loss is the cross-entropy summed over the
batch's examples, each weighted by its class's weight when report.json has class weights; the
loop divides by the number of examples. Evaluation reports the plain (unweighted) cross-entropy,
accuracy and macro-F1; the best weights are chosen by accuracy.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.adapters import LoraConfig, add_classifier_adapter, classifier_heads, set_trainable
from lorakit.atomic import atomic_dir
from lorakit.classifier import load_classifier
from lorakit.errors import LorakitError
from lorakit.train.classify_batches import Example, fixed_batches, load_examples, max_length, read_report
from lorakit.train.classify_metrics import accuracy, confusion_matrix, macro_f1
from lorakit.train.config import TrainConfig
from lorakit.train.recompute import recomputing

log = logging.getLogger("lorakit")


def load_classifier_base(cfg: TrainConfig, device: torch.device):
    """``(model, tokenizer)``: `cfg.model` as a classifier with the dataset's classes. The dataset is
    checked first, so an LM dataset is refused before any model loads."""
    report = read_report(cfg.data)
    torch.manual_seed(cfg.seed)  # a new head (on a causal LM, say) is part of the run's identity
    model, tokenizer = load_classifier(cfg.model, report.classes, device=device)
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.use_cache = False  # a classifier never generates: no KV cache in training
    return model, tokenizer


def load_classify_data(cfg: TrainConfig, tokenizer) -> tuple[list[Example], list[Example], dict]:
    """train and valid examples (with the model's special tokens), with load statistics."""
    data = Path(cfg.data)
    report = read_report(data)
    limit = max_length(tokenizer, cfg.max_seq_len, reserved=cfg.virtual_tokens or 0)  # None unless prefix/prompt
    train, stats = load_examples(data / "train.jsonl", report, tokenizer, limit, cfg.strict)
    if not train:
        raise LorakitError(f"{data / 'train.jsonl'}: no examples; re-run `lorakit data prepare --task classify`")
    valid = []
    if (data / "valid.jsonl").is_file():
        valid, _ = load_examples(data / "valid.jsonl", report, tokenizer, limit)
    if stats.truncated:
        log.warning("%d training examples were longer than %d tokens and were truncated", stats.truncated, limit)
    return train, valid, {"train_samples": stats.samples, "train_tokens": stats.tokens,
                          "truncated": stats.truncated, "valid_samples": len(valid)}


def prepare_classifier(model: nn.Module, method: str, lora: LoraConfig) -> nn.Module:
    """Attach what `method` trains on a classifier and freeze the rest: lora/dora (`lora`, the head
    in modules_to_save), full, or head (the classifier head's own weights only)."""
    if method in ("lora", "dora"):
        add_classifier_adapter(model, lora)
        set_trainable(model, "default")
    elif method == "full":
        model.requires_grad_(True)
    elif method == "head":
        model.requires_grad_(False)
        for name in classifier_heads(model):
            model.get_submodule(name).requires_grad_(True)
    else:  # prefix and prompt are attached by `lorakit.train.methods.prepare_model`
        raise LorakitError(f"--method {method} --task classify: use lora, dora, full, head, prefix or prompt")
    return model


def class_weights(data: str | Path) -> torch.Tensor | None:
    """report.json's class weights as a tensor (K,), or None."""
    weights = read_report(data).weights
    return None if weights is None else torch.tensor(weights, dtype=torch.float32)


def logits_of(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's logits (B, K) for a batch's ``input_ids`` and ``attention_mask`` (B, T), moved
    to the model's device."""
    device = next(model.parameters()).device
    return model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits


def classification_loss(model: nn.Module, batch: dict[str, torch.Tensor],
                        weights: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """``(sum over the batch of each example's cross-entropy x its class weight, examples)``.

    batch: ``input_ids``, ``attention_mask`` (B, T) and ``labels`` (B,). Activations registered
    for recomputation (lean layers) are not stored."""
    with recomputing():
        logits = logits_of(model, batch)
    labels = batch["labels"].to(logits.device)
    weight = None if weights is None else weights.to(logits.device)
    return F.cross_entropy(logits.float(), labels, weight=weight, reduction="sum"), int(labels.numel())


@torch.no_grad()
def predict(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> tuple[list[int], list[int], float]:
    """``(true classes, predicted classes, summed unweighted cross-entropy)`` over `batches`,
    the model put back in its mode afterwards."""
    was_training = model.training
    model.eval()
    labels, preds, total = [], [], 0.0
    for batch in batches:
        logits = logits_of(model, batch).float()
        truth = batch["labels"].to(logits.device)
        total += float(F.cross_entropy(logits, truth, reduction="sum"))
        labels += truth.tolist()
        preds += logits.argmax(-1).tolist()
    model.train(was_training)
    return labels, preds, total


def evaluate_classifier(model: nn.Module, valid: list[Example], batch_size: int, n_batches: int, pad_id: int,
                        num_classes: int) -> dict[str, float]:
    """eval_loss (mean cross-entropy), eval_accuracy and eval_macro_f1 on the first
    `n_batches` x `batch_size` examples of a fixed shuffle of `valid`."""
    labels, preds, total = predict(model, fixed_batches(valid, batch_size, pad_id, n_batches * batch_size))
    matrix = confusion_matrix(labels, preds, num_classes)
    return {"eval_loss": total / max(len(labels), 1), "eval_accuracy": accuracy(matrix),
            "eval_macro_f1": macro_f1(matrix), "eval_examples": len(labels)}


def _best_so_far(metrics_path: Path, upto: int) -> float:
    """The highest eval accuracy at steps up to `upto` in a run's metrics.jsonl (-inf for none)."""
    best = -math.inf
    lines = metrics_path.read_text(errors="replace").splitlines() if metrics_path.is_file() else []
    for line in lines:
        try:
            row = json.loads(line)
            value, step = row.get("eval_accuracy"), row.get("step")
        except (ValueError, AttributeError, RecursionError):
            continue
        if isinstance(value, (int, float)) and isinstance(step, int) and step <= upto:
            best = max(best, float(value))
    return best


class BestByAccuracy:
    """An on_eval hook: writes ``best/`` (through `save`, then ``best/best.json`` with the step and
    its scores) whenever the eval accuracy beats every earlier evaluation of the run.

    A run resumed at step `resumed` counts the evaluations before it: those up to that step in
    `earlier`, the metrics.jsonl of the run that wrote the checkpoint (a fresh run: none)."""

    def __init__(self, best_dir: Path, save: Callable[[Path], None], earlier: Path, resumed: int = 0) -> None:
        self.best_dir, self.save = best_dir, save
        self.best = _best_so_far(earlier, resumed) if resumed else -math.inf

    def on_eval(self, step: int, result: dict[str, float]) -> None:
        if result["eval_accuracy"] <= self.best:
            return
        self.best = result["eval_accuracy"]
        with atomic_dir(self.best_dir) as tmp:
            self.save(tmp)
            (tmp / "best.json").write_text(json.dumps({"step": step, **result}, indent=1) + "\n")


def print_eval(step: int, result: dict[str, float]) -> None:
    """The eval line of a classification run (stderr, beside the progress bar)."""
    sys.stderr.write(f"eval @ step {step}: loss {result['eval_loss']:.4f}  accuracy {result['eval_accuracy']:.4f}  "
                     f"macro-F1 {result['eval_macro_f1']:.4f}  ({result['eval_examples']} examples)\n")
    sys.stderr.flush()


def eval_hooks(cfg: TrainConfig, best_dir: Path, save: Callable[[Path], None], earlier: Path,
               resumed: int) -> list[Callable[[int, dict], None]]:
    """A classification run's on_eval hooks: the best adapter by accuracy (`BestByAccuracy`; as for
    --task lm, none for full and head, whose mid-run weights may be fused), and the eval line."""
    hooks = [] if cfg.method in ("full", "head") else [BestByAccuracy(best_dir, save, earlier, resumed).on_eval]
    return hooks + ([print_eval] if cfg.progress else [])
