"""Benchmark `lorakit data prepare` on the whole shared Gutenberg corpus (not a timed test).

Runs the real CLI in a child process, exactly as a user would, and measures its wall time,
CPU time and peak resident memory (getrusage of the child, cross-checked by sampling the
child's RSS with psutil). Prints a Markdown table for bench/RESULTS.md and, with --json,
writes the figures to a file.

    .venv/bin/python bench/prepare_data.py                # instruct, seq-len 512
    .venv/bin/python bench/prepare_data.py --format chat --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus" / "gutenberg-russian"
LIMIT_SECONDS, LIMIT_RSS_MB = 120, 2048


def _sample_rss(pid: int, peak: list[int], stop: threading.Event) -> None:
    try:
        proc = psutil.Process(pid)
        while not stop.is_set():
            rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
            peak[0] = max(peak[0], rss)
            time.sleep(0.05)
    except psutil.Error:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", default=str(CORPUS), help="corpus folder (default: the shared Gutenberg corpus)")
    ap.add_argument("--format", default="instruct", choices=("text", "instruct", "chat"))
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if not Path(args.input).is_dir():
        print(f"corpus not found: {args.input}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lorakit-bench-") as tmp:
        out = Path(tmp) / "dataset"
        cmd = [sys.executable, "-m", "lorakit", "data", "prepare", "--input", args.input, "--out", str(out),
               "--format", args.format, "--seq-len", str(args.seq_len)]
        peak, stop = [0], threading.Event()
        start = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sampler = threading.Thread(target=_sample_rss, args=(child.pid, peak, stop), daemon=True)
        sampler.start()
        output, _ = child.communicate()
        wall = time.perf_counter() - start
        stop.set()
        sampler.join()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        if child.returncode != 0:
            print(output, file=sys.stderr)
            return child.returncode
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        files = sorted(p for p in Path(args.input).rglob("*.txt"))
    figures = {
        "command": "lorakit " + " ".join(shlex.quote(a) for a in cmd[3:]).replace(str(out), "OUT_DIR"),
        "input_mb": round(sum(f.stat().st_size for f in files) / 1e6, 2),
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb_getrusage": round(usage.ru_maxrss / 1024),
        "peak_rss_mb_psutil": round(peak[0] / 2**20),
        "stage_s": report["timing"],
        "files": len(report["inputs"]["files"]),
        "duplicates": [(Path(d["file"]).name, Path(d["duplicate_of"]).name, d["similarity"])
                       for d in report["duplicates"]["documents"]],
        "filtered": report["filtered"]["paragraphs"] | report["filtered"]["samples"],
        "splits": {k: {"samples": v["samples"], "tokens": v["tokens"], "books": len(v["books"])}
                   for k, v in report["splits"].items()},
        "leakage_pairs": report["leakage"]["pairs_found"],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"load average {os.getloadavg()[0]:.1f} at the end",
    }
    peak_mb = max(figures["peak_rss_mb_getrusage"], figures["peak_rss_mb_psutil"])
    ok = figures["wall_s"] < LIMIT_SECONDS and peak_mb < LIMIT_RSS_MB
    print("| metric | value |\n|---|---|")
    for key in ("command", "input_mb", "wall_s", "cpu_s", "peak_rss_mb_getrusage", "peak_rss_mb_psutil", "files",
                "duplicates", "filtered", "splits", "leakage_pairs", "stage_s", "machine"):
        value = figures[key]
        print(f"| {key} | `{value}` |" if key == "command" else f"| {key} | {value} |")
    print(f"\nwithin budget ({LIMIT_SECONDS}s, {LIMIT_RSS_MB} MB): {'yes' if ok else 'NO'}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
