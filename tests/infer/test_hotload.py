"""Hot loading in two parts: `prepare_adapter` (any thread, model only read) and `attach_adapter` (engine thread)."""

from __future__ import annotations

import pytest
import torch


def _snapshot(model) -> tuple:
    """Everything a load could change: module tree, adapter registry, every parameter's identity and version."""
    from lorakit.adapters import adapters

    modules = tuple((n, id(m)) for n, m in model.named_modules())
    params = tuple((n, id(p), p._version, p.requires_grad) for n, p in model.named_parameters())
    return modules, params, tuple(adapters(model))


def _logits(model, name: str, ids: torch.Tensor) -> torch.Tensor:
    from lorakit.adapters import set_adapter

    set_adapter(model, name)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture()
def dora_dir(tmp_path, tiny_dir):
    """A saved DoRA adapter (all-linear, r=4) for the tiny model, with a non-trivial magnitude."""
    from lorakit.adapters import LoraConfig, add_adapter, adapter_parameters, save_adapter
    from lorakit.models import load_model

    model, _ = load_model(tiny_dir, with_tokenizer=False)
    add_adapter(model, LoraConfig(r=4, alpha=8, target_modules="all-linear", use_dora=True), "d")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in adapter_parameters(model, "d"):
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    save_adapter(model, tmp_path / "d", name="d")
    return tmp_path / "d"


@pytest.mark.parametrize("which", ["a1", "a3", "dora"])
def test_prepare_changes_nothing_and_attach_equals_a_fresh_load(tiny_dir, adapter_root, dora_dir, which):
    from lorakit.adapters import adapters, load_adapter
    from lorakit.adapters.io import attach_adapter, prepare_adapter
    from lorakit.models import load_model

    path = dora_dir if which == "dora" else adapter_root / which
    ids = torch.randint(3, 1000, (2, 7), generator=torch.Generator().manual_seed(0))
    fresh, _ = load_model(tiny_dir, with_tokenizer=False)
    load_adapter(fresh, path, "new")  # the plain way, on a model with no other adapter
    want = _logits(fresh, "new", ids)

    served, _ = load_model(tiny_dir, with_tokenizer=False)
    load_adapter(served, adapter_root / "a0", "a0")  # every linear wrapped: attach only inserts modules
    before = _snapshot(served)
    prepared = prepare_adapter(served, path, "new")
    assert prepared.parts is not None
    assert _snapshot(served) == before
    attach_adapter(served, prepared)
    assert set(adapters(served)) == {"a0", "new"}
    torch.testing.assert_close(_logits(served, "new", ids), want, rtol=0, atol=0)
    assert all(not p.requires_grad for p in served.parameters())


def test_attach_after_an_unload_unwrapped_the_targets(tiny_dir, adapter_root):
    """An unload between prepare and attach makes the plan stale; attach must notice and still load right."""
    from lorakit.adapters import adapters, delete_adapter, load_adapter
    from lorakit.adapters.io import attach_adapter, prepare_adapter
    from lorakit.models import load_model

    ids = torch.randint(3, 1000, (1, 6), generator=torch.Generator().manual_seed(1))
    fresh, _ = load_model(tiny_dir, with_tokenizer=False)
    load_adapter(fresh, adapter_root / "a1", "a1")
    want = _logits(fresh, "a1", ids)

    model, _ = load_model(tiny_dir, with_tokenizer=False)
    load_adapter(model, adapter_root / "a0", "a0")
    prepared = prepare_adapter(model, adapter_root / "a1", "a1")
    delete_adapter(model, "a0")  # every wrapper goes back to its base linear
    attach_adapter(model, prepared)
    assert list(adapters(model)) == ["a1"]
    torch.testing.assert_close(_logits(model, "a1", ids), want, rtol=0, atol=0)


def test_refused_adapters_change_nothing(tiny_dir, adapter_root):
    from lorakit.adapters import load_adapter
    from lorakit.adapters.io import attach_adapter, prepare_adapter
    from lorakit.errors import AdapterLoadError
    from lorakit.models import load_model

    model, _ = load_model(tiny_dir, with_tokenizer=False)
    load_adapter(model, adapter_root / "a0", "a0")
    before = _snapshot(model)
    with pytest.raises(AdapterLoadError, match="different base model"):
        prepare_adapter(model, adapter_root / "alien", "alien")
    prepared = prepare_adapter(model, adapter_root / "a1", "a0b")
    load_adapter(model, adapter_root / "a2", "a0b")  # the name got taken meanwhile
    taken = _snapshot(model)
    with pytest.raises(AdapterLoadError, match="already loaded"):
        attach_adapter(model, prepared)
    assert _snapshot(model) == taken != before


@pytest.fixture()
def engine(tiny_dir, adapter_root):
    from lorakit.adapters import load_adapter
    from lorakit.infer.engine import Engine
    from lorakit.models import load_model

    model, tok = load_model(tiny_dir)
    load_adapter(model, adapter_root / "a0", "a0")
    engine = Engine(model, tok, max_batch=4, max_context=64)
    yield engine
    engine.close()


def _hold_worker(engine):
    """Keep the engine's worker busy until the returned event is set (as a long decode step would)."""
    import threading

    release, holding = threading.Event(), threading.Event()
    engine.post(lambda: (holding.set(), release.wait(30)))
    assert holding.wait(10)
    return release


def _greedy_text(engine, ids, adapter, max_tokens=8):
    from lorakit.infer.sampling import SamplingParams

    events = list(engine.stream(ids, adapter, SamplingParams(max_tokens=max_tokens, temperature=0)))
    assert events[-1].kind == "done", events[-1]
    return "".join(e.text for e in events if e.kind == "token")


def test_load_returns_before_the_worker_attaches_and_later_requests_use_the_adapter(engine, adapter_root, tiny_dir):
    """A load does not wait for the step in flight; a request sent after it returns still runs with
    the adapter, because it queues behind the attach."""
    import queue

    from lorakit.adapters import adapters, load_adapter
    from lorakit.infer import hotswap
    from lorakit.infer.engine import Engine
    from lorakit.infer.sampling import SamplingParams
    from lorakit.models import load_model

    ids = engine.tokenizer("The old house stood").input_ids
    release = _hold_worker(engine)
    attached = hotswap.load(engine, "hot", adapter_root / "a1")
    assert not attached.done() and "hot" not in adapters(engine.model)  # returned while the worker was busy
    events: queue.Queue = queue.Queue()
    engine.submit(ids, "hot", SamplingParams(max_tokens=8, temperature=0), events.put)  # accepted already
    with pytest.raises(hotswap.AdapterConflictError):
        hotswap.load(engine, "hot", adapter_root / "a3")  # the name is taken from the moment load returns
    release.set()
    assert attached.result(10) < 1.0
    got = []
    while not got or got[-1].kind == "token":
        got.append(events.get(timeout=30))
    assert got[-1].kind == "done"

    fresh, tok = load_model(tiny_dir)  # the same request served alone on a model holding only that adapter
    load_adapter(fresh, adapter_root / "a1", "hot")
    alone = Engine(fresh, tok, max_batch=1, max_context=64)
    try:
        assert "".join(e.text for e in got if e.kind == "token") == _greedy_text(alone, ids, "hot")
    finally:
        alone.close()
    assert engine.public_adapters == ("a0", "hot") and not engine.pending


def test_a_failed_attach_fails_the_requests_queued_behind_it(engine):
    """If the insert itself fails (after every check passed), requests already sent for that name
    get an error event instead of running without the adapter, and the name is free again."""
    import queue

    from lorakit.infer.request import UnknownAdapterError
    from lorakit.infer.sampling import SamplingParams

    ids = engine.tokenizer("Hello there").input_ids
    release = _hold_worker(engine)

    def broken() -> None:
        raise RuntimeError("disk vanished")

    attached = engine.post(broken, adds="ghost")
    events: queue.Queue = queue.Queue()
    engine.submit(ids, "ghost", SamplingParams(max_tokens=4, temperature=0), events.put)
    release.set()
    with pytest.raises(RuntimeError, match="disk vanished"):
        attached.result(10)
    event = events.get(timeout=10)
    assert event.kind == "error" and "ghost" in event.error
    assert "ghost" not in engine.public_adapters and not engine.pending
    with pytest.raises(UnknownAdapterError):
        engine.submit(ids, "ghost", SamplingParams(max_tokens=4), events.put)
    assert _greedy_text(engine, ids, "a0")  # the engine still serves
