"""Fuzz every file lorakit reads with many more examples than `make test` runs (issue 15).

Usage: PYTHONPATH=. python bench/fuzz_inputs.py [--examples 2000] [--seed 0] [--only NAME ...]

Runs the hypothesis properties of the tests/*/test_fuzz_*.py files (the same strategies and the
same checks) with --examples inputs each, counting instead of stopping at the first failure,
and prints per target how many inputs were tried, how many violated the property (a traceback,
a message of more than one line or not naming the file, a file changed on disk, a model,
optimizer or RNG changed by a failed load), and the first violation.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.adapters import test_fuzz_adapter_files as adapter_files  # noqa: E402
from tests.data import test_fuzz_readers as readers  # noqa: E402
from tests.train import test_fuzz_checkpoint as checkpoint  # noqa: E402
from tests.train import test_fuzz_yaml_config as yaml_config  # noqa: E402

TARGETS: dict[str, Callable] = {
    "input files (.txt/.jsonl/.gz bytes)": readers.test_any_input_file_gives_records_or_one_line_naming_it,
    "input JSONL lines": readers.test_any_jsonl_line_gives_a_record_or_one_line_naming_file_and_line,
    "prepared split lines (read_rows)": readers.test_any_split_line_is_a_row_or_one_line_naming_file_and_line,
    "adapter_config.json fields": adapter_files.test_any_adapter_config_loads_as_written_or_is_refused_in_one_line,
    "adapter_config.json documents": adapter_files.test_any_config_document_is_refused_in_one_line_unless_it_is_an_adapter,
    "adapter safetensors": adapter_files.test_any_safetensors_file_loads_or_is_refused_in_one_line,
    "checkpoints": checkpoint.test_a_spoiled_checkpoint_resumes_or_says_in_one_line_how_to_go_on,
    "train YAML config": yaml_config.test_any_yaml_gives_a_well_typed_config_or_one_line_naming_the_file,
}


def run_target(test: Callable, examples: int, seed_value: int) -> dict:
    """Run one hypothesis test with `examples` inputs, counting violations instead of stopping."""
    counts = {"tried": 0, "violated": 0, "first": None}
    inner = test.hypothesis.inner_test

    def counting(*args, **kwargs):
        counts["tried"] += 1
        try:
            inner(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure of the property is a violation to count
            counts["violated"] += 1
            counts["first"] = counts["first"] or f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"

    # the test's own settings (a fixed, small count) are swapped for a large, seeded one; hypothesis
    # refuses a second @settings, so the attribute it reads is set directly
    own = test._hypothesis_internal_use_settings
    test.hypothesis.inner_test = counting
    test._hypothesis_internal_use_settings = settings(own, max_examples=examples, derandomize=False,
                                                      suppress_health_check=list(HealthCheck))
    try:
        seed(seed_value)(test)()
    finally:
        test.hypothesis.inner_test, test._hypothesis_internal_use_settings = inner, own
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (the run repeats for a seed)")
    parser.add_argument("--only", nargs="*", default=None, help="targets whose name contains one of these words")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # hypothesis warns about large reprs of the hostile inputs
    chosen = {n: t for n, t in TARGETS.items() if not args.only or any(w in n for w in args.only)}
    print(f"{'target':40} {'tried':>7} {'violated':>9} {'seconds':>8}  first violation")
    total = 0
    for name, test in chosen.items():
        started = time.perf_counter()
        counts = run_target(test, args.examples, args.seed)
        total += counts["violated"]
        print(f"{name:40} {counts['tried']:7d} {counts['violated']:9d} {time.perf_counter() - started:8.1f}  "
              f"{counts['first'] or '-'}", flush=True)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
