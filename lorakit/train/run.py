"""`lorakit train` end to end: load, prepare, (resume,) loop, save — one function per stage."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorakit.adapters import save_adapter, save_virtual_adapter
from lorakit.errors import LorakitError
from lorakit.hub import base_model_fields
from lorakit.models import DEFAULT_MODEL
from lorakit.outputs import check_output, model_path
from lorakit.plan.speed import SpeedPlan, for_memory, resolve_speed
from lorakit.runtime.device import resolve_device, set_threads
from lorakit.runtime.memory import lean_malloc, release_free_heap
from lorakit.runtime.precision import autocast, native_bf16
from lorakit.train import distributed
from lorakit.train.batches import Batches, load_samples
from lorakit.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from lorakit.train import classify
from lorakit.train.classify_batches import ClassifyBatches, refuse_classify_data
from lorakit.train.config import VIRTUAL_METHODS, TrainConfig
from lorakit.train.defaults import memory_choices, precision_choice, resolve_data_defaults
from lorakit.train.loop import Hooks, LoopState, train_loop
from lorakit.train.methods import prepare_model
from lorakit.train.objective import causal_lm_loss, evaluate
from lorakit.train.progress import MetricsLog, ProgressBar, plot_loss
from lorakit.train.schedule import make_scheduler
from lorakit.train.speed import apply_speed_plan

log = logging.getLogger("lorakit")

# what a run writes into --out (a full/head run: a model directory): any of them there means a previous run
RUN_FILES = ("checkpoints", "adapter_model.safetensors", "adapter_config.json", "model.safetensors",
             "model.safetensors.index.json", "config.json", "metrics.jsonl", "summary.json", "best",
             "train_config.yaml", "loss.png")


def check_out(cfg: TrainConfig, replace: bool = False) -> Path:
    """Refuse an --out that overlaps --data, the model or a model cache, or holds a previous run
    (unless resuming it, or `replace`: the caller owns the folder and starts it over)."""
    if not cfg.out:
        raise LorakitError("--out is required: where the adapter, checkpoints and metrics go")
    reads = [("the dataset (--data)", cfg.data), ("the base model (--model)", model_path(cfg.model))]
    out = check_output(cfg.out, reads)
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not cfg.resume and not replace:
        if any((out / "checkpoints").glob("step-*")):  # not latest.json: it may be what is broken
            raise LorakitError(f"--out {out} holds a previous run ({', '.join(found[:3])}); continue it with "
                               "--resume auto, or choose a new --out")
        raise LorakitError(f"--out {out} holds a previous run or model ({', '.join(found[:3])}) with no checkpoint "
                           "to resume; choose a new --out")
    return out


def load_data(cfg: TrainConfig, tokenizer) -> tuple[list, list, dict[str, Any]]:
    """train and valid samples (classification examples for --task classify), with load statistics."""
    if cfg.task == "classify":
        return classify.load_classify_data(cfg, tokenizer)
    if not cfg.data:
        raise LorakitError("--data is required: a directory with train.jsonl from `lorakit data prepare`")
    data = Path(cfg.data)
    if not data.is_dir():
        raise LorakitError(f"{data}: dataset directory not found; run `lorakit data prepare --out {data}`")
    refuse_classify_data(data)
    train, stats = load_samples(data / "train.jsonl", tokenizer, cfg.max_seq_len, cfg.strict)
    if not train:
        raise LorakitError(f"{data / 'train.jsonl'}: no usable samples; re-run `lorakit data prepare`")
    valid = []
    if (data / "valid.jsonl").is_file():
        valid, _ = load_samples(data / "valid.jsonl", tokenizer, cfg.max_seq_len, strict=False)
    if stats.truncated:
        log.warning("%d training samples were longer than --max-seq-len %d and were truncated",
                    stats.truncated, cfg.max_seq_len)
    return train, valid, {"train_samples": stats.samples, "train_tokens": stats.tokens,
                          "truncated": stats.truncated, "valid_samples": len(valid)}


def load_base(cfg: TrainConfig, device: torch.device):
    """Model and tokenizer for the run (4-bit base for qlora; a classifier for --task classify)."""
    from lorakit.models import load_model

    if cfg.task == "classify":
        return classify.load_classifier_base(cfg, device)
    if cfg.method == "qlora":
        from lorakit.quant import load_base_model

        # the frozen untied head in int8 too: as large as a fifth of a small model, and it only
        # ever runs forward and its input gradient (issue 18)
        return load_base_model(cfg.model, "nf4", device=device, head="int8")
    return load_model(cfg.model, device=device)


def save_final(model: nn.Module, tokenizer, cfg: TrainConfig, out: Path) -> None:
    """The run's product: a PEFT adapter (LoRA/DoRA, or PREFIX_TUNING / PROMPT_TUNING for prefix and
    prompt), or a full model directory for full/head."""
    if cfg.method in ("full", "head"):
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    elif cfg.method in VIRTUAL_METHODS:
        save_virtual_adapter(model, out, **base_model_fields(str(cfg.model or DEFAULT_MODEL)))
    else:
        save_adapter(model, out, **base_model_fields(str(cfg.model or DEFAULT_MODEL)))


def speed_plan(cfg: TrainConfig, model: nn.Module, device: torch.device) -> SpeedPlan:
    """The run's resolved speed plan, for this model on this machine (bench/train_throughput.py
    calls this and `apply_speed_plan` too, so it measures what `lorakit train` runs)."""
    return resolve_speed(model_type=getattr(model.config, "model_type", None), device=device, **cfg.speed_settings())


def training_loss(cfg: TrainConfig, plan: SpeedPlan, device: torch.device):
    """The loss a step minimises: ``loss_fn(model, batch) -> (summed loss, labelled tokens)`` (for
    --task classify: the summed, class-weighted cross-entropy and the number of examples)."""
    if cfg.task == "classify":
        weights = classify.class_weights(cfg.data)

        def classify_loss(m: nn.Module, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
            with autocast(plan.precision, device):
                return classify.classification_loss(m, b, weights)

        return classify_loss

    def loss_fn(m: nn.Module, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        with autocast(plan.precision, device):  # backward runs outside it, as autocast asks
            return causal_lm_loss(m, b, cfg.loss_chunk, plan.compiled_loss)

    return loss_fn


def make_batches(cfg: TrainConfig, samples: list, pad_id: int, rank: int = 0, world: int = 1):
    """The run's endless training batches: LM rows (padded or packed), or bucketed classification
    examples padded to each batch's longest."""
    if cfg.task == "classify":
        return ClassifyBatches(samples, cfg.batch_size, seed=cfg.seed, pad_id=pad_id, rank=rank, world=world)
    return Batches(samples, cfg.batch_size, seed=cfg.seed, pad_id=pad_id, packing=cfg.packing,
                   row_len=cfg.max_seq_len, mask_prompt=cfg.mask_prompt, rank=rank, world=world)


def evaluation(cfg: TrainConfig, model: nn.Module, valid: list, pad_id: int, plan: SpeedPlan,
               device: torch.device) -> dict[str, float]:
    """One evaluation on (at most --eval-batches batches of) valid.jsonl: eval_loss and perplexity,
    or for --task classify eval_loss, eval_accuracy and eval_macro_f1."""
    with autocast(plan.precision, device):
        if cfg.task == "classify":
            return classify.evaluate_classifier(model, valid, cfg.batch_size, cfg.eval_batches, pad_id,
                                                model.config.num_labels)
        valid_batches = Batches(valid, cfg.batch_size, seed=0, pad_id=pad_id, packing=cfg.packing,
                                row_len=cfg.max_seq_len, mask_prompt=cfg.mask_prompt)
        n = min(cfg.eval_batches, valid_batches.per_epoch())
        return evaluate(model, valid_batches, n, cfg.loss_chunk, plan.compiled_loss)


def run_training(cfg: TrainConfig, *, replace: bool = False) -> dict[str, Any]:
    """Train as `cfg` says; returns a summary (also written to ``OUT/summary.json``).

    An --out holding a previous run is refused unless `cfg.resume` continues it, or `replace`
    (for callers that own the folder, e.g. `lorakit compare`'s runs) starts it over.
    """
    out = check_out(cfg, replace)  # before distributed.init: no rank has written anything yet
    if for_memory(cfg.method, cfg.release_memory):  # before loading: the loader's frees return at once too
        lean_malloc()
    dist = distributed.init()
    device = resolve_device(cfg.device) if dist.device is None else dist.device
    threads = set_threads(cfg.threads) if device.type == "cpu" else None
    model, tokenizer = load_base(cfg, device)
    plan = speed_plan(cfg, model, device)
    precision = plan.precision
    asked = cfg
    cfg = dataclasses.replace(cfg, grad_checkpoint=plan.grad_checkpoint, release_memory=plan.release_memory)
    if dist.rank == 0:
        _precision_hint(cfg.precision, precision, device)
    train, valid, data_stats = load_data(cfg, tokenizer)
    cfg, choices = resolve_data_defaults(cfg, train)  # packing, mask_prompt: auto -> on/off, from the data
    choices = [c for c in [precision_choice(cfg.precision, precision),
                           *memory_choices(asked, plan), *choices]
               if c is not None]
    if dist.rank == 0 and choices:
        log.info("defaults chosen here:\n%s", "\n".join(f"  {c.format()}" for c in choices))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = make_batches(cfg, train, pad_id, dist.rank, dist.world)
    max_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * batches.per_epoch() / cfg.grad_accum))
    prepare_model(model, cfg, tokenizer)
    undo_speed = apply_speed_plan(model, plan)
    if dist.rank == 0:
        log.info("%s", plan.format())
    _print_plan(cfg, dist.rank, plan)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.schedule, cfg.warmup, max_steps)

    # the resolved precision: `auto` means fp32 on one chip and bf16 on another
    fingerprint = {**cfg.to_dict(), "model": str(cfg.model or DEFAULT_MODEL), "precision": precision}
    state = LoopState()
    metrics = MetricsLog(out / "metrics.jsonl", cfg.log_every)
    ckpt_root = out / "checkpoints"
    resume_from = (latest_checkpoint(ckpt_root) if cfg.resume == "auto" else Path(cfg.resume)) if cfg.resume else None
    if cfg.resume and resume_from is None:
        raise LorakitError(f"--resume auto: no checkpoint in {ckpt_root}; start without --resume")
    if resume_from is not None:
        saved = load_checkpoint(resume_from, model, optimizer, scheduler, fingerprint)
        batches.load_state(saved["batches"])
        state = LoopState(step=saved["step"], tokens=saved["tokens"], best_eval=saved.get("best_eval", math.inf))
        if dist.rank == 0:
            metrics.truncate_after(state.step)
            log.info("resumed from %s at step %d", resume_from, state.step)
    elif dist.rank == 0:  # `replace`: a fresh run starts a fresh log and no old checkpoint survives it
        metrics.path.unlink(missing_ok=True)
        for stale in (ckpt_root, out / "best"):
            shutil.rmtree(stale, ignore_errors=True)

    def do_evaluate() -> dict[str, float]:
        return evaluation(cfg, model, valid, pad_id, plan, device)

    def do_save(step: int) -> None:
        if dist.rank == 0:
            save_checkpoint(ckpt_root, step, model, optimizer, scheduler,
                            {"config": fingerprint, "batches": batches.state(), "tokens": state.tokens,
                             "best_eval": state.best_eval}, keep=cfg.keep_checkpoints)

    def do_save_best(step: int) -> None:
        if dist.rank == 0 and cfg.method not in ("full", "head"):
            save_final(model, tokenizer, cfg, out / "best")

    hooks = Hooks(evaluate=do_evaluate if valid else None, save=do_save,
                  save_best=do_save_best if cfg.task == "lm" else None, all_reduce=dist.all_reduce)
    if cfg.release_memory:
        hooks.on_step.append(lambda step, metrics: release_free_heap())
    if dist.rank == 0:
        cfg.write(out, speed_plan=plan.to_dict())
        bar = ProgressBar(max_steps, enabled=cfg.progress, per_example=cfg.task == "classify")
        hooks.on_step += [bar.on_step, metrics.on_step]
        hooks.on_eval += [metrics.on_eval]
        if cfg.task == "classify":  # the best adapter by accuracy, not eval loss; accuracy on the eval line
            earlier = metrics.path if resume_from is None else resume_from.parent.parent / "metrics.jsonl"
            hooks.on_eval += classify.eval_hooks(cfg, out / "best", lambda d: save_final(model, tokenizer, cfg, d),
                                                 earlier, state.step)
        elif cfg.progress:
            hooks.on_eval.append(ProgressBar(max_steps).on_eval)
    train_loop(model, batches, training_loss(cfg, plan, device), optimizer, scheduler, max_steps=max_steps, grad_accum=cfg.grad_accum,
               max_grad_norm=cfg.max_grad_norm, eval_every=cfg.eval_every, save_every=cfg.save_every,
               hooks=hooks, state=state)
    summary = {"steps": state.step, "tokens": state.tokens, "best_eval_loss": state.best_eval, "threads": threads,
               "device": str(device), "precision": precision,
               "attention": model.config._attn_implementation, "world_size": dist.world,
               "speed_plan": plan.to_dict(), "defaults": [c.to_dict() for c in choices], **data_stats}
    undo_speed()
    if dist.rank == 0:
        save_final(model, tokenizer, cfg, out)
        # what vLLM / llama.cpp would refuse: warnings (their checks read LoRA adapters)
        if cfg.task == "lm" and cfg.method not in ("full", "head", *VIRTUAL_METHODS):
            from lorakit.export.check import warn_serving

            warn_serving(out, model.config)
        plot_loss(metrics.path, out / "loss.png")
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    dist.close()
    return summary


def _precision_hint(asked: str, precision: str, device: torch.device) -> None:
    """Say which precision runs, and when fp32 was asked for on a chip where bf16 is native."""
    if asked != "auto":  # auto's choice is logged with the other defaults
        log.info("precision: %s", precision)
    if precision == "fp32" and asked == "fp32" and device.type == "cpu" and native_bf16("cpu"):
        log.info("this CPU runs bf16 matmuls natively: --precision bf16 trains faster "
                 "(adapter, optimizer and loss stay fp32)")


def _print_plan(cfg: TrainConfig, rank: int, plan: SpeedPlan) -> None:
    """Predicted peak memory before starting, with a warning when it will not fit."""
    if rank != 0 or cfg.method == "head" or cfg.task == "classify":  # the planner models causal LMs
        return
    if cfg.method in VIRTUAL_METHODS:  # the planner models full, LoRA and QLoRA training
        log.info("memory plan: not modelled for --method %s", cfg.method)
        return
    from lorakit.plan import estimate

    method = {"dora": "lora"}.get(cfg.method, cfg.method)
    try:
        est = estimate(cfg.model or DEFAULT_MODEL, method=method, batch_size=cfg.batch_size, seq_len=cfg.max_seq_len,
                       rank=cfg.rank, targets=cfg.targets, loss_chunk_tokens=cfg.loss_chunk, lora_dropout=cfg.dropout,
                       speed=plan)
    except LorakitError as exc:
        log.info("memory plan unavailable: %s", exc)
        return
    log.info("%s", est.format())
    if est.verdict != "fits":
        log.warning("predicted peak %.1f GB vs %.1f GB available (%s): try --release-memory, --grad-checkpoint, "
                    "a smaller --batch-size or --max-seq-len, or --method qlora", est.total / 1e9, est.available / 1e9, est.verdict)
