"""Kill -9 soak of `lorakit train --resume auto`: the killed-and-resumed adapter must equal an uninterrupted one.

    .venv/bin/python bench/soak_train.py                      # tiny random llama, 10 kills
    .venv/bin/python bench/soak_train.py --kills 3            # a quick look
    .venv/bin/python bench/soak_train.py --model smollm2-135m-instruct --kills 4 --max-steps 24

The trainer runs as a user runs it (`python -m lorakit train ...`, one process per attempt). First
one uninterrupted reference run; then the same settings into a fresh --out, SIGKILLed at K moments
drawn from a seeded RNG and restarted each time with `--resume auto` (or without it while no
checkpoint exists yet). Half the kills aim at a checkpoint write: the checkpoints folder is polled
and the process killed the moment a temporary checkpoint directory appears; the others land at a
random time in the next few save intervals. A kill counts as mid-write when a new temporary entry
is left behind by it. At the end the two adapter_model.safetensors files must be bitwise equal,
tensor by tensor, and metrics.jsonl must hold each step once. Exit status 1 on any mismatch or
failed restart.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.train.conftest import save_tiny_llama, write_dataset  # noqa: E402


def cpu_summary() -> str:
    """CPU model, the kernel flags it has and its GEMM peaks (lorakit.runtime.machine)."""
    import torch

    from lorakit.runtime.machine import cpu_facts, gemm_peak_gflops

    facts = cpu_facts()
    return (f"{facts['cpu']}, {facts['logical_cores']} CPUs; flags {' '.join(facts['flags'])}; GEMM peak fp32 "
            f"{gemm_peak_gflops(seconds=1):.0f}, bf16 {gemm_peak_gflops(torch.bfloat16, seconds=1):.0f} GFLOP/s")


def temp_entries(out: Path) -> set[str]:
    """Paths under `out` that are leftovers of an unfinished atomic write (temp or swapped-out old)."""
    if not out.exists():
        return set()
    return {str(p.relative_to(out)) for p in out.rglob(".*") if ".tmp" in p.name or ".old-" in p.name}


def steps_logged(out: Path) -> list[int]:
    """Steps in metrics.jsonl with a training loss (a torn last line is skipped, not fatal here)."""
    rows = []
    path = out / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in row:
            rows.append(row["step"])
    return rows


@dataclass
class Soak:
    """What the killed run went through."""

    kills_attempted: int = 0
    kills_landed: int = 0          # the process was still running when killed
    mid_write: int = 0             # the kill left a new temporary checkpoint entry behind
    survived: int = 0              # kills after which the next start ran on without an error
    resumes: int = 0               # starts with --resume auto
    fresh_restarts: int = 0        # starts without it (killed before the first checkpoint)
    failures: list[str] = field(default_factory=list)


def train_argv(model: str, data: Path, out: Path, args: argparse.Namespace, resume: bool) -> list[str]:
    argv = [sys.executable, "-m", "lorakit", "train", "--model", model, "--data", str(data), "--out", str(out),
            "--batch-size", str(args.batch_size), "--max-seq-len", str(args.max_seq_len),
            "--max-steps", str(args.max_steps), "--save-every", str(args.save_every), "--rank", str(args.rank),
            "--lr", "5e-3", "--warmup", "2", "--dropout", "0.1", "--seed", "0", "--threads", str(args.threads),
            "--no-progress"]
    return argv + (["--resume", "auto"] if resume else [])


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def _wait_for_training(proc: subprocess.Popen, out: Path, after_step: int, timeout: float) -> bool:
    """Until this process has logged a step past `after_step` (True) or has ended (False).

    The file is compared with its state at the start: until the resumed process truncates it,
    metrics.jsonl still holds the killed process's steps past its checkpoint."""
    metrics = out / "metrics.jsonl"
    start = _stamp(metrics)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if _stamp(metrics) != start:
            logged = steps_logged(out)
            if logged and logged[-1] > after_step:
                return True
        time.sleep(0.02)
    return proc.poll() is None


def _last_step(metrics: Path) -> int | None:
    """The step of metrics.jsonl's last complete line (None while there is none)."""
    try:
        with metrics.open("rb") as fh:
            fh.seek(max(0, metrics.stat().st_size - 4096))
            lines = fh.read().decode(errors="replace").splitlines()
        return json.loads(lines[-1])["step"] if lines else None
    except (OSError, ValueError, KeyError):
        return None


def _kill_in_checkpoint_write(proc: subprocess.Popen, out: Path, before: set[str], save_every: int,
                              delay_max: float, rng: random.Random, give_up: float) -> None:
    """SIGKILL inside a checkpoint write: the moment a new temporary entry appears in the checkpoints
    folder, or a random moment within `delay_max` after a save step's metrics line (the trainer
    logs a step, then saves it)."""
    ckpt, metrics = out / "checkpoints", out / "metrics.jsonl"
    size = metrics.stat().st_size if metrics.exists() else 0
    deadline = time.monotonic() + give_up
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            names = os.listdir(ckpt)
        except FileNotFoundError:
            names = []
        if any((".tmp" in n or ".old-" in n) and f"checkpoints/{n}" not in before for n in names):
            break
        now = metrics.stat().st_size if metrics.exists() else 0
        if now != size:
            size = now
            step = _last_step(metrics)
            if step is not None and step % save_every == 0:
                time.sleep(rng.uniform(0, delay_max))
                break
        time.sleep(0.0002)
    proc.send_signal(signal.SIGKILL)


def _interrupted_write(out: Path, before: set[str]) -> str:
    """How the kill left a checkpoint half done ("" when it did not): a new temp entry, or a step
    directory newer than the one latest.json points to (renamed into place, pointer not yet moved)."""
    from lorakit.train.checkpoint import latest_checkpoint

    new = sorted(temp_entries(out) - before)
    if new:
        return f"left {', '.join(new)}"
    steps = sorted((out / "checkpoints").glob("step-*"))
    latest = latest_checkpoint(out / "checkpoints")
    if steps and (latest is None or steps[-1].name > latest.name):
        return f"{steps[-1].name} in place, latest.json not yet moved"
    return ""


def checkpoint_write_s(ckpt_root: Path) -> float:
    """How long the last checkpoint write took: first tensor file to latest.json, from their mtimes."""
    from lorakit.train.checkpoint import latest_checkpoint

    last = latest_checkpoint(ckpt_root)
    if last is None:
        return 0.02
    first = (last / "trainable.safetensors").stat().st_mtime_ns
    return max(0.001, ((ckpt_root / "latest.json").stat().st_mtime_ns - first) / 1e9)


def soak(model: str, data: Path, out: Path, args: argparse.Namespace, step_s: float, write_s: float) -> Soak:
    """Run into `out`, killing K times, then let the last start finish; returns what happened."""
    from lorakit.train.checkpoint import latest_checkpoint

    rng = random.Random(args.seed)
    result = Soak()
    for start in range(args.kills + 1):
        latest = latest_checkpoint(out / "checkpoints")
        if start > 0:
            result.resumes += latest is not None
            result.fresh_restarts += latest is None
        resume_step = int(latest.name.split("-")[1]) if latest is not None else 0
        proc = subprocess.Popen(train_argv(model, data, out, args, latest is not None), cwd=REPO, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if start == args.kills:  # the last start runs to the end
            _, err = proc.communicate()
            if proc.returncode != 0:
                result.failures.append(f"final start exited {proc.returncode}: {err.decode()[-600:].strip()}")
            elif start > 0:
                result.survived += 1
            break
        before = temp_entries(out)
        running = _wait_for_training(proc, out, resume_step, timeout=600)
        if start > 0 and running:
            result.survived += 1  # it trained on past its checkpoint after the previous kill
        window = step_s * args.save_every * 3
        result.kills_attempted += 1
        mode = "checkpoint-write" if rng.random() < 0.5 else "random"
        if running and mode == "checkpoint-write":
            _kill_in_checkpoint_write(proc, out, before, args.save_every, 1.5 * write_s, rng, give_up=window + 5)
        elif running:
            time.sleep(rng.uniform(0, window))
        landed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        if not landed:  # it ended on its own: finished (no more kills possible), or failed
            if proc.returncode != 0:
                result.failures.append(f"start {start} exited {proc.returncode}: {err.decode()[-600:].strip()}")
            elif start > 0:
                result.survived += 1
            break
        result.kills_landed += 1
        mid = _interrupted_write(out, before)
        result.mid_write += bool(mid)
        latest = latest_checkpoint(out / "checkpoints")
        print(f"  kill {start + 1}: {mode}, started at step {resume_step}, last logged step "
              f"{(steps_logged(out) or [0])[-1]}, latest checkpoint {latest.name if latest else None}"
              f"{f'; mid-write: {mid}' if mid else ''}", flush=True)
    return result


def compare_adapters(a: Path, b: Path) -> list[str]:
    """Names of tensors that differ (or exist in only one file); empty when bitwise equal."""
    import torch
    from safetensors.torch import load_file

    x, y = load_file(a), load_file(b)
    diff = sorted(set(x) ^ set(y))
    diff += [k for k in sorted(set(x) & set(y)) if x[k].dtype != y[k].dtype or not torch.equal(x[k], y[k])]
    return diff


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="HF dir or alias (default: a tiny random llama built here)")
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    p.add_argument("--max-steps", type=int, default=None, help="default: enough for every kill to land")
    p.add_argument("--save-every", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-seq-len", type=int, default=64)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=None, help="working folder (default: a temp dir, removed unless --keep)")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    args.max_steps = args.max_steps or max(40, 4 * args.save_every * (args.kills + 1))
    print("command:", " ".join([sys.executable, *sys.argv]), flush=True)
    print("cpu:", cpu_summary(), flush=True)

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="soak-train-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or str(save_tiny_llama(work / "model"))
    data = write_dataset(work / "data", n_train=400, n_valid=8)  # the trainer tests' random-id dataset
    started = time.monotonic()

    t0 = time.monotonic()
    ref = subprocess.run(train_argv(model, data, work / "ref", args, False), cwd=REPO, env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ref_s = time.monotonic() - t0
    if ref.returncode != 0:
        print("reference run failed:", ref.stderr.decode()[-800:])
        return 1
    metrics = [json.loads(line) for line in (work / "ref" / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time"] for r in metrics if "step_time" in r]
    step_s = sum(times) / len(times) if times else ref_s / args.max_steps
    write_s = checkpoint_write_s(work / "ref" / "checkpoints")
    print(f"reference: {args.max_steps} steps in {ref_s:.1f} s (mean step {step_s * 1000:.1f} ms, "
          f"checkpoint write {write_s * 1000:.1f} ms)", flush=True)

    t0 = time.monotonic()
    res = soak(model, data, work / "soak", args, step_s, write_s)
    soak_s = time.monotonic() - t0
    ok = not res.failures
    diff: list[str] = []
    final = work / "soak" / "adapter_model.safetensors"
    if ok and final.is_file():
        diff = compare_adapters(work / "ref" / "adapter_model.safetensors", final)
    elif ok:
        res.failures.append("the soaked run wrote no adapter_model.safetensors")
    logged = steps_logged(work / "soak")
    steps_ok = logged == list(range(1, args.max_steps + 1))
    stray = sorted(temp_entries(work / "soak"))
    equal = ok and not diff and final.is_file()

    print(f"kills attempted: {res.kills_attempted}, landed: {res.kills_landed}, "
          f"mid-checkpoint-write: {res.mid_write}, survived: {res.survived}")
    print(f"starts: resumes {res.resumes}, fresh restarts (no checkpoint yet) {res.fresh_restarts}")
    print(f"final adapter bitwise equal to the reference: {'yes' if equal else 'no'}"
          + (f" ({len(diff)} tensors differ, first {diff[0]})" if diff else ""))
    print(f"metrics.jsonl holds steps 1..{args.max_steps} once each: {'yes' if steps_ok else 'no'}"
          + ("" if steps_ok else f" (got {len(logged)} rows, duplicates {len(logged) - len(set(logged))})"))
    print(f"stray temp entries left in --out: {len(stray)}" + (f" {stray[:6]}" if stray else ""))
    print(f"wall time: reference {ref_s:.1f} s, soak {soak_s:.1f} s, total {time.monotonic() - started:.1f} s")
    for failure in res.failures:
        print("FAILED:", failure)
    if not args.keep and not args.work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        print("work folder:", work)
    return 0 if equal and steps_ok else 1


if __name__ == "__main__":
    sys.exit(main())
