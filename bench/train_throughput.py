"""LoRA training throughput and memory: lorakit vs PEFT + transformers, same model, same batches.

    .venv/bin/python bench/train_throughput.py --steps 50                 # (a) B=4 x 256, fixed length
    .venv/bin/python bench/train_throughput.py --case dataset --data DIR  # (b) real prepared dataset

With no lorakit flags, lorakit runs as `lorakit train` does with none: precision, packing and
completion-only loss at their `auto` defaults, resolved on this machine and this data.
    .venv/bin/python bench/train_throughput.py --steps 50 --precision bf16 --compile   # lorakit's fastest
    .venv/bin/python bench/train_throughput.py --steps 50 --precision bf16 --compile --peft-precision bf16
    .venv/bin/python bench/train_throughput.py --steps 12 --model smollm2-135m-instruct,gemma3-270m

Each --model (default SmolLM2-135M-Instruct; any `--model` lorakit takes) is run by both systems in
turn and reported on its own.

Both systems train the model (fp32 weights, r=16, alpha=32, all linear layers, LoRA dropout 0.05
unless --dropout says otherwise, AdamW lr 1e-4) from the *same* adapter initialisation
(lorakit's, loaded into PEFT) on the same batches.
Each system runs alone in a fresh process, one after the other, exactly as it would train:
lorakit with `lorakit train`'s settings (the flags above mirror the trainer's), PEFT + transformers
as their user runs them (fp32, or bf16 autocast as the HF Trainer's ``bf16=True``). Reported per
system: the median step's tokens/s after two warm-up steps, the loss after the last step and the
process's peak RSS (VmHWM, `lorakit.runtime.memory.peak_rss_mb`); the load average before and
after tells whether the machine was quiet. (b) counts only labelled tokens: lorakit packs samples
into 512-token rows where its packing default (or --packing) says so, PEFT pads each batch of 4
samples to its longest; both use lorakit's completion-only loss setting.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorakit.adapters import LoraConfig, add_adapter, save_adapter, set_trainable  # noqa: E402
from lorakit.data.schema import read_rows  # noqa: E402
from lorakit.models import load_model  # noqa: E402
from lorakit.runtime.machine import cpu_facts, gemm_peak_gflops  # noqa: E402
from lorakit.runtime.int8_kernel import INT8_GAIN, int8_speedup  # noqa: E402
from lorakit.runtime.memory import lean_malloc, release_free_heap  # noqa: E402
from lorakit.data.schema import Sample  # noqa: E402
from lorakit.train.batches import Batches, load_samples, padded_batch  # noqa: E402
from lorakit.train.config import TrainConfig  # noqa: E402
from lorakit.train.defaults import resolve_data_defaults  # noqa: E402
from lorakit.train.loss import IGNORE  # noqa: E402
from lorakit.runtime.precision import autocast  # noqa: E402
from lorakit.runtime.memory import peak_rss_mb  # noqa: E402
from lorakit.train.run import speed_plan, training_loss  # noqa: E402
from lorakit.train.speed import apply_speed_plan  # noqa: E402

LR, RANK, ALPHA = 1e-4, 16, 32


def flops_per_token(model: torch.nn.Module, seq: int) -> float:
    """~4 x linear params (forward + input gradient through frozen weights) + LoRA + attention."""
    cfg = model.config
    # every Linear, the (tied) output head included: it is an nn.Linear sharing the embedding's weight
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = 6 * seq * cfg.hidden_size * cfg.num_hidden_layers  # QK^T and AV, causal, fwd + bwd
    return 4 * linear + attention


def fixed_batches(n_steps: int, batch: int, seq: int, data: str | None, tokenizer):
    """(a): fixed-length windows of a dataset's text in the model's own tokens, else random ids."""
    if data:
        rows = read_rows(Path(data) / "train.jsonl", "content").rows
        stream = [t for row in rows for t in tokenizer(row["text"], add_special_tokens=False).input_ids]
    else:
        stream = torch.randint(0, len(tokenizer), (n_steps * batch * seq + 1,),
                               generator=torch.Generator().manual_seed(0)).tolist()
    out = []
    for i in range(n_steps):
        rows = [Sample(stream[(i * batch + b) * seq:(i * batch + b + 1) * seq]) for b in range(batch)]
        out.append(padded_batch(rows, pad_id=0, mask_prompt=False))
    return out


def dataset_batches(n_steps: int, data: str, tokenizer, pad_id: int, packing: bool | None, mask_prompt: bool | None):
    """(b): lorakit's batches as `lorakit train` builds them (its packing and completion-only loss,
    `auto` resolved from the data as the trainer does), PEFT padded batches of 4 samples with the same
    loss mask, over the same sample order (the dataset's token ids are its preparing tokenizer's:
    only for the model it was prepared for). Also returns the resolved settings."""
    samples, _ = load_samples(Path(data) / "train.jsonl", max_seq_len=512)
    cfg, _ = resolve_data_defaults(TrainConfig(max_seq_len=512, packing=packing, mask_prompt=mask_prompt), samples)
    ours = Batches(samples, 4, seed=0, pad_id=pad_id, packing=cfg.packing, row_len=512, mask_prompt=cfg.mask_prompt)
    padded = Batches(samples, 4, seed=0, pad_id=pad_id, packing=False, mask_prompt=cfg.mask_prompt)
    settings = {"packing": cfg.packing, "mask_prompt": cfg.mask_prompt}
    return [next(ours) for _ in range(n_steps)], [next(padded) for _ in range(n_steps)], settings


def build(system: str, model_spec: str, adapter_dir: Path, precision: str | None = None, release_memory: bool = False,
          attention: str | None = None, **speed):
    """(model, step) for `system`, set up as it would train.

    lorakit: exactly as `lorakit train` does (`run.speed_plan`, `apply_speed_plan`, `run.training_loss`), `speed` being its
    --fuse / --lean-memory / --compile settings (default: the trainer's), `release_memory` its
    --release-memory, `attention` its --attention, `precision` its --precision (None: the trainer's
    default). PEFT: `precision` "bf16" runs the forward and loss under bf16 autocast (what the HF
    Trainer's ``bf16=True`` does).
    """
    cpu = torch.device("cpu")
    if system == "lorakit":
        from lorakit.adapters import load_adapter

        given = {"precision": precision} if precision is not None else {}
        cfg = TrainConfig(model=model_spec, attention=attention, release_memory=release_memory, **given, **speed)
        if release_memory:
            lean_malloc()  # before loading, as the trainer does
        model, _ = load_model(model_spec)
        load_adapter(model, adapter_dir, trainable=True)  # the initialisation PEFT loads too
        set_trainable(model, "default")
        plan = speed_plan(cfg, model, cpu)
        apply_speed_plan(model, plan)
        model.__dict__["_bench_speed_plan"] = plan.to_dict()  # reported beside the figures
        step_loss = functools.partial(training_loss(cfg, plan, cpu), model)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_model(model_spec)[0], adapter_dir, is_trainable=True)

        def step_loss(b):
            labels = b["labels"]  # already shifted; HF shifts itself, so hand it unshifted targets
            hf_labels = torch.full_like(labels, IGNORE)
            hf_labels[:, 1:] = labels[:, :-1]
            with autocast(precision, cpu):
                out = model(input_ids=b["input_ids"], attention_mask=b.get("attention_mask"), labels=hf_labels)
            n = int((labels != IGNORE).sum())
            return out.loss * n, n
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)

    def step(batch) -> tuple[float, int]:
        loss, n = step_loss(batch)
        (loss / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if system == "lorakit" and release_memory:
            release_free_heap()  # the trainer's per-step hook under --release-memory
        return float(loss.detach()) / n, n

    return model, step


def with_padding_mask(batches):
    """PEFT needs an attention mask for padded rows (lorakit's right padding needs none)."""
    for b in batches:
        # a row's real tokens run up to its last labelled position + 1 (that token's target)
        labelled = (b["labels"] != IGNORE).long()
        upto = labelled.flip(1).cummax(1).values.flip(1)  # 1 up to the last labelled position
        b["attention_mask"] = torch.maximum(upto, torch.roll(upto, 1, 1))
    return batches


def make_adapter(model: torch.nn.Module, model_spec: str, dropout: float, tmp: Path) -> Path:
    """The initial adapter both systems load (`model` gets it attached)."""
    torch.manual_seed(0)
    add_adapter(model, LoraConfig(r=RANK, alpha=ALPHA, dropout=dropout, target_modules="all-linear"))
    return save_adapter(model, tmp / "init", base_model_name_or_path=model_spec)


def worker(system: str, model_spec: str, args: argparse.Namespace, adapter_dir: Path) -> dict:
    """One system alone in this process: per-step times, token counts and losses, and peak RSS."""
    torch.set_num_threads(2)
    from lorakit.models import load_tokenizer

    tokenizer = load_tokenizer(model_spec)
    data_settings = {}
    if args.case == "fixed":
        batches = fixed_batches(args.steps, 4, 256, args.data, tokenizer)
    else:
        ours, padded, data_settings = dataset_batches(args.steps, args.data, tokenizer, tokenizer.pad_token_id or 0,
                                                      args.packing, args.mask_prompt)
        batches = ours if system == "lorakit" else with_padding_mask(padded)
    if system == "lorakit":
        model, step = build(system, model_spec, adapter_dir, args.precision, args.release_memory, args.attention,
                            compile=args.compile, fuse=args.fuse, lean_memory=args.lean_memory)
    else:
        model, step = build(system, model_spec, adapter_dir, args.peft_precision)
    rows = []
    for b in batches:
        start = time.perf_counter()
        loss, n = step(b)
        rows.append((time.perf_counter() - start, n, loss))
    return {"system": system, "steps": rows, "peak_rss_mb": peak_rss_mb(),
            "attention": model.config._attn_implementation, "speed_plan": getattr(model, "_bench_speed_plan", None),
            "data_settings": data_settings}


def summarise(run: dict, fpt: float, peak: float) -> dict:
    rates = [n / t for t, n, _ in run["steps"][2:]]  # the first two steps warm up allocators (and compile)
    tps = statistics.median(rates)
    return {"tokens_per_s": round(tps, 1), "gflops": round(tps * fpt / 1e9, 1),
            "share_of_fp32_peak": round(tps * fpt / 1e9 / peak, 3), "final_loss": round(run["steps"][-1][2], 4),
            "peak_rss_mb": round(run["peak_rss_mb"])}


def run_model(model_spec: str, args: argparse.Namespace, peak: float, peak_bf16: float) -> dict:
    """Both systems (or --only one) on `model_spec`, each alone in a fresh process; the result row."""
    load_before = os.getloadavg()[0]
    model, _ = load_model(model_spec, with_tokenizer=False)
    fpt = flops_per_token(model, 256 if args.case == "fixed" else 512)  # of the base, before the adapter
    params = sum(p.numel() for p in model.parameters())
    adapter_dir = make_adapter(model, model_spec, args.dropout, Path(tempfile.mkdtemp(prefix="lorakit-bench-")))
    del model
    runs = {}
    for system in [args.only] if args.only else ["lorakit", "peft"]:  # one after the other, each alone
        cmd = [sys.executable, __file__, "--worker", system, "--worker-model", model_spec,
               "--adapter", str(adapter_dir)] + sys.argv[1:]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if out.returncode:
            sys.exit(f"{system} worker failed on {model_spec}:\n{out.stderr[-3000:]}")
        runs[system] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{model_spec} {system}: " + " ".join(f"{n / t:.0f}" for t, n, _ in runs[system]["steps"]) + " tok/s",
              flush=True)
    settings = {"lorakit": {"precision": args.precision or "default (auto)", "compile": args.compile, "release_memory": args.release_memory,
                            "fuse": args.fuse, "lean_memory": args.lean_memory},
                "peft": {"precision": args.peft_precision}}
    result = {"model": model_spec, "params": params, "flops_per_token": fpt,
              **{name: {**settings[name], "attention": run["attention"], "speed_plan": run.get("speed_plan"),
                        **run.get("data_settings", {}), **summarise(run, fpt, peak)} for name, run in runs.items()},
              "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    if not args.only:
        result["speedup"] = round(result["lorakit"]["tokens_per_s"] / result["peft"]["tokens_per_s"], 2)
        result["memory_ratio"] = round(result["lorakit"]["peak_rss_mb"] / result["peft"]["peak_rss_mb"], 2)
        result["loss_gap"] = round(abs(result["lorakit"]["final_loss"] - result["peft"]["final_loss"])
                                   / result["peft"]["final_loss"], 4)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct",
                    help="comma-separated models, as `lorakit train --model` takes them")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--case", choices=["fixed", "dataset"], default="fixed")
    ap.add_argument("--data", default=None, help="prepared dataset dir (required for --case dataset)")
    ap.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout of the adapter both systems train")
    ap.add_argument("--compile", action="store_true", help="lorakit runs as `lorakit train --compile`")
    ap.add_argument("--precision", choices=["fp32", "bf16", "int8", "auto"], default=None,
                    help="lorakit's --precision (default: the trainer's, auto)")
    ap.add_argument("--packing", action=argparse.BooleanOptionalAction, default=None,
                    help="(b) lorakit's --packing (default: the trainer's auto, decided from the data)")
    ap.add_argument("--mask-prompt", action=argparse.BooleanOptionalAction, default=None,
                    help="(b) lorakit's --mask-prompt (default: the trainer's auto); PEFT gets the same loss mask")
    ap.add_argument("--release-memory", action="store_true", help="lorakit runs with --release-memory")
    ap.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=True, help="lorakit's --fuse")
    ap.add_argument("--lean-memory", action=argparse.BooleanOptionalAction, default=True,
                    help="lorakit's --lean-memory")
    ap.add_argument("--attention", default=None,
                    help="lorakit's --attention (e.g. eager, eager_recompute; default: the trainer's choice)")
    ap.add_argument("--peft-precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: PEFT + transformers under bf16 autocast (the HF Trainer's bf16=True)")
    ap.add_argument("--only", choices=["lorakit", "peft"],
                    help="run one system (to compare lorakit's own settings; no ratio is printed)")
    ap.add_argument("--worker", choices=["lorakit", "peft"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-model", help=argparse.SUPPRESS)
    ap.add_argument("--adapter", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case == "dataset" and not args.data:
        ap.error("--case dataset needs --data DIR (from `lorakit data prepare`)")
    if args.worker:
        print(json.dumps(worker(args.worker, args.worker_model, args, Path(args.adapter))))
        return
    torch.set_num_threads(2)
    machine = cpu_facts()
    peak, peak_bf16 = gemm_peak_gflops(), gemm_peak_gflops(torch.bfloat16)
    int8_gain = int8_speedup()  # what `--precision auto` weighs on a CPU without native bf16
    print(f"machine: {machine['cpu']}, flags {' '.join(machine['flags'])}; GEMM fp32 {peak:.0f} GFLOP/s, "
          f"bf16 {peak_bf16:.0f} GFLOP/s; int8 path {int8_gain:.2f}x fp32 (auto takes int8 from {INT8_GAIN}x "
          "without native bf16)", flush=True)
    results = [run_model(spec.strip(), args, peak, peak_bf16) for spec in args.model.split(",") if spec.strip()]
    peak_after = gemm_peak_gflops()  # again after the runs: background load can spoil one reading
    print(json.dumps({"case": args.case, "steps": args.steps, "dropout": args.dropout, "machine": machine,
                      "matmul_peak_gflops": {"fp32": round(max(peak, peak_after), 1), "fp32_after": round(peak_after, 1),
                                             "bf16": round(peak_bf16, 1), "int8_path_vs_fp32": round(int8_gain, 2)},
                      "models": results}, indent=1))


if __name__ == "__main__":
    main()
