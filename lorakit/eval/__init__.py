"""Judge adapters: perplexity, style, drift and samples (`run_eval`), and method comparison (`run_compare`).

The heavy entry points load on first use, so `lorakit --help` stays fast.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name == "run_eval":
        from lorakit.eval.run import run_eval

        return run_eval
    if name == "run_compare":
        from lorakit.eval.compare import run_compare

        return run_compare
    raise AttributeError(f"module 'lorakit.eval' has no attribute {name!r}")


__all__ = ["run_eval", "run_compare"]
