"""Fuzz the OpenAI-compatible server's endpoints at length (tests/infer/test_server_fuzz.py, many more examples).

    .venv/bin/python bench/fuzz_server.py --examples 2000 [--seed 1]

Builds the tests' tiny Llama (SmolLM2's tokenizer) with adapters a0..a2 loaded and an adapter
root holding a0..a3 and one for another base, then POSTs field bodies, arbitrary JSON and raw
bytes to every endpoint, and DELETEs arbitrary adapter names. Properties, as in the test: 2xx
or 4xx only, the error envelope on every non-2xx, /health still answering, the adapter root
unchanged. Prints, per endpoint and strategy, the inputs tried, the answers by status class,
and the failures (the first few shown); exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _build_files(root: Path) -> tuple[Path, Path]:
    """The tiny model directory and an adapter root, as tests/infer/conftest.py builds them."""
    from lorakit.adapters import save_adapter
    from lorakit.models import load_model, load_tokenizer
    from tests.infer.conftest import _tiny_llama, make_adapter

    model_dir, adapters = root / "tiny", root / "adapters"
    _tiny_llama(64, 0).save_pretrained(model_dir)
    load_tokenizer().save_pretrained(model_dir)
    model, _ = load_model(model_dir, with_tokenizer=False)
    for i in range(4):
        make_adapter(model, f"a{i}", r=4 + 4 * (i % 2), seed=10 + i,
                     targets="all-linear" if i != 3 else ["q_proj", "v_proj"])
        save_adapter(model, adapters / f"a{i}", name=f"a{i}")
    other = _tiny_llama(32, 1)
    make_adapter(other, "alien", r=4, seed=99)
    save_adapter(other, adapters / "alien", name="alien")
    return model_dir, adapters


def main(argv: list[str] | None = None) -> int:
    """Run every property with `--examples` inputs each; print the counts."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=1000, help="inputs per endpoint and strategy")
    p.add_argument("--seed", type=int, default=0, help="hypothesis seed")
    p.add_argument("--max-context", type=int, default=64)
    args = p.parse_args(argv)

    from fastapi.testclient import TestClient
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st

    from tests.infer import test_server_fuzz as fz

    # the server logs each 500's traceback; here the failure lines below say enough
    logging.getLogger("lorakit.infer").setLevel(logging.CRITICAL)

    work = Path(tempfile.mkdtemp(prefix="lorakit-fuzz-"))
    model_dir, adapter_root = _build_files(work)
    engine, app = fz.build(model_dir, adapter_root, max_context=args.max_context)
    digest = fz.tree_digest(adapter_root)
    client = TestClient(app, raise_server_exceptions=False)
    client.__enter__()

    plans = [(path, kind, strategy) for path in fz.ENDPOINTS for kind, strategy in
             (("fields", fz.ENDPOINTS[path].map(fz.encode)), ("json", fz.JSON_VALUES.map(fz.encode)), ("raw", fz.RAW))]
    plans.append(("/v1/adapters/{name}", "names", fz.TEXT | st.text(max_size=200)))
    failures_total = 0
    print(f"{'endpoint':28} {'strategy':8} {'tried':>7} {'2xx':>6} {'4xx':>6} {'failed':>6} {'s':>7}")
    for path, kind, strategy in plans:
        tried, classes, failures = 0, collections.Counter(), []

        @seed(args.seed)
        @settings(max_examples=args.examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(value=strategy)
        def run(value) -> None:
            nonlocal tried
            tried += 1
            if kind == "names":
                resp = client.delete("/v1/adapters/" + quote(value, safe="", errors="surrogatepass"))
            else:
                resp = client.post(path, content=value, headers={"content-type": "application/json"})
            classes[resp.status_code // 100] += 1
            wrong = fz.problem(resp)
            if wrong is None and client.get("/health").status_code != 200:
                wrong = "/health stopped answering"
            if wrong is not None:  # recorded, not raised: the count of failures is the result
                failures.append(f"{value!r:.200} -> {wrong}")

        start = time.perf_counter()
        run()
        failures_total += len(failures)
        print(f"{path:28} {kind:8} {tried:7d} {classes[2]:6d} {classes[4]:6d} {len(failures):6d} "
              f"{time.perf_counter() - start:7.1f}", flush=True)
        for line in failures[:5]:
            print("    ", line)
    client.__exit__(None, None, None)
    engine.close()
    changed = fz.tree_digest(adapter_root) != digest
    print(f"adapter root {'CHANGED' if changed else 'unchanged'}; {failures_total} failures in all")
    return 1 if failures_total or changed else 0


if __name__ == "__main__":
    sys.exit(main())
