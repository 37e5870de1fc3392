"""The engine on a tiny model: KV-cached continuous batching equals plain full-recompute greedy decoding."""

from __future__ import annotations

import contextlib
import math
import threading

import pytest
import torch

from lorakit.infer.engine import Engine
from lorakit.infer.sampling import SamplingParams


def reference_greedy(model, ids: list[int], steps: int, eos: set[int]) -> list[int]:
    """Greedy continuation by re-running the whole sequence every step (no cache, batch of one)."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(input_ids=torch.tensor([out])).logits[0, -1].argmax())
            if nxt in eos:
                break
            out.append(nxt)
    return out[len(ids):]


def run_all(engine: Engine, jobs: list[tuple[list[int], str | None, SamplingParams]]) -> list[list]:
    """Submit every job at once (they batch together) and collect each one's events."""
    results: list[list] = [[] for _ in jobs]
    done = [threading.Event() for _ in jobs]

    def sink(i):
        def emit(event):
            results[i].append(event)
            if event.kind != "token":
                done[i].set()
        return emit

    for i, (ids, adapter, params) in enumerate(jobs):
        engine.submit(ids, adapter, params, sink(i))
    for d in done:
        assert d.wait(60), "a request never finished"
    return results


@pytest.fixture(scope="module")
def engine_and_model(tiny_dir, adapter_root):
    from lorakit.adapters import load_adapter
    from lorakit.models import load_model

    model, tok = load_model(tiny_dir)
    for name in ("a0", "a1", "a3"):
        load_adapter(model, adapter_root / name, name)
    # prefill_chunk 5 makes prompts span several chunks; max_batch 3 makes requests wait for slots
    engine = Engine(model, tok, max_batch=3, max_context=96, prefill_chunk=5)
    yield engine, model, tok
    engine.close()


def test_cached_batched_greedy_equals_full_recompute(engine_and_model):
    from lorakit.adapters import disable_adapters, set_adapter

    engine, model, tok = engine_and_model
    prompts = [tok(p).input_ids for p in ("Once upon a time", "The cat sat on", "A B C D E F G H I J K L", "Hi")]
    names = [None, "a0", "a1", "a3", None, "a0"]
    jobs = [(prompts[i % 4], names[i], SamplingParams(max_tokens=12, temperature=0)) for i in range(6)]
    results = run_all(engine, jobs)
    for (ids, name, _), events in zip(jobs, results):
        text = "".join(e.text for e in events if e.kind == "token")
        if name is None:
            with disable_adapters(model):
                ref = reference_greedy(model, ids, 12, engine.eos_ids)
        else:
            set_adapter(model, name)
            ref = reference_greedy(model, ids, 12, engine.eos_ids)
        assert text == tok.decode(ref, skip_special_tokens=True), (name, ids)
        # an EOS ends the answer without text but counts as a generated token (as vLLM counts it)
        assert events[-1].completion_tokens == len(ref) + (events[-1].finish_reason == "stop")


def test_bf16_base_with_fp32_adapters_decodes_like_its_own_full_recompute(tiny_dir, adapter_root):
    """`--precision bf16`: base weights and KV cache in bf16, adapter factors fp32. Cached, batched,
    chunked decoding picks, at every step, a token that re-running the whole bf16 sequence ranks
    first up to bf16 rounding (the two round differently, so exact greedy equality is not a property
    of bf16), and the adapters still act."""
    from lorakit.adapters import disable_adapters, load_adapter, set_adapter
    from lorakit.models import load_model
    from lorakit.runtime.precision import hold_base_in

    model, tok = load_model(tiny_dir)
    assert hold_base_in(model, "bf16") == "bf16"
    for name in ("a0", "a1"):
        load_adapter(model, adapter_root / name, name)
    assert {p.dtype for n, p in model.named_parameters() if ".lora_" in n} == {torch.float32}
    engine = Engine(model, tok, max_batch=3, max_context=96, prefill_chunk=5)
    try:
        assert engine.cache.keys[0].dtype == torch.bfloat16
        prompts = [tok(p).input_ids for p in ("Once upon a time", "The cat sat on", "A B C D E F G H")]
        done = threading.Semaphore(0)
        requests = [engine.submit(ids, name, SamplingParams(max_tokens=10, temperature=0),
                                  lambda e: e.kind == "token" or done.release())
                    for ids in prompts for name in (None, "a0", "a1")]
        for _ in requests:
            assert done.acquire(timeout=60), "a request never finished"
    finally:
        engine.close()
    answers = []
    for req in requests:
        answer = req.output_ids
        assert len(answer) == req.generated
        answers.append(answer)
        if req.adapter is not None:
            set_adapter(model, req.adapter)
        with disable_adapters(model) if req.adapter is None else contextlib.nullcontext(), torch.no_grad():
            logits = model(input_ids=torch.tensor([req.prompt_ids + answer])).logits[0].float()
        for t, token in enumerate(answer):
            step = logits[len(req.prompt_ids) - 1 + t]
            top = float(step.max())
            ulp = 2.0 ** (math.floor(math.log2(abs(top))) - 7)  # bf16 spacing at the top logit
            # measured: at most half an ulp (0.0625); a wrong cache or adapter path is off by 2-13
            assert top - float(step[token]) <= 2 * ulp, (req.adapter, t)
    assert len({tuple(a) for a in answers[:3]}) == 3  # base, a0 and a1 answer differently


def test_adapters_change_the_answer(engine_and_model):
    engine, _, tok = engine_and_model
    ids = tok("Tell me a story").input_ids
    texts = ["".join(e.text for e in ev if e.kind == "token")
             for ev in run_all(engine, [(ids, n, SamplingParams(max_tokens=10, temperature=0)) for n in (None, "a0", "a1")])]
    assert len(set(texts)) == 3, texts


def test_seeded_sampling_is_reproducible_across_batches(engine_and_model):
    engine, _, tok = engine_and_model
    ids = tok("Random words:").input_ids
    params = lambda seed: SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=seed)  # noqa: E731
    alone = run_all(engine, [(ids, "a0", params(7))])[0]
    mixed = run_all(engine, [(ids, None, params(1)), (ids, "a0", params(7)), (ids, "a1", params(2))])[1]
    assert [e.text for e in alone] == [e.text for e in mixed]
    other = run_all(engine, [(ids, "a0", params(8))])[0]
    assert [e.text for e in other] != [e.text for e in alone]


def test_stop_string_cuts_the_text_and_length_limit(engine_and_model):
    engine, _, tok = engine_and_model
    ids = tok("Count:").input_ids
    [full] = run_all(engine, [(ids, None, SamplingParams(max_tokens=8, temperature=0))])
    text = "".join(e.text for e in full if e.kind == "token")
    assert full[-1].finish_reason == "length" and full[-1].completion_tokens == 8
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop.strip(), text
    [cut] = run_all(engine, [(ids, None, SamplingParams(max_tokens=8, temperature=0, stop=[stop]))])
    cut_text = "".join(e.text for e in cut if e.kind == "token")
    assert cut[-1].finish_reason == "stop"
    assert cut_text == text[: text.find(stop)]


def test_context_end_finishes_with_length(engine_and_model):
    engine, _, tok = engine_and_model
    ids = tok("word " * 200).input_ids[: engine.max_context - 3]
    assert len(ids) == engine.max_context - 3
    [events] = run_all(engine, [(ids, None, SamplingParams(max_tokens=50, temperature=0))])
    assert events[-1].finish_reason in ("length", "stop")
    assert events[-1].completion_tokens <= 3


def test_cancel_frees_the_slot(engine_and_model):
    engine, _, tok = engine_and_model
    ids = tok("Go on forever").input_ids
    stream = engine.stream(ids, None, SamplingParams(max_tokens=80, temperature=0))
    next(stream)
    stream.close()  # like a client that disconnects: cancels the request
    [events] = run_all(engine, [(ids, None, SamplingParams(max_tokens=3, temperature=0))])
    assert events[-1].kind == "done"
    assert engine.load()["running"] == 0 and engine.prefilling is None


def test_refusals(engine_and_model):
    from lorakit.infer.request import PromptTooLongError, UnknownAdapterError

    engine, _, _ = engine_and_model
    with pytest.raises(UnknownAdapterError, match="no adapter named 'nope'"):
        engine.submit([1, 2], "nope", SamplingParams(), print)
    with pytest.raises(PromptTooLongError, match="context holds 96"):
        engine.submit([5] * 96, None, SamplingParams(), print)


def test_worker_threads(engine_and_model):
    from lorakit.infer.engine import worker_threads

    engine, _, _ = engine_and_model
    assert engine.call(torch.get_num_threads) == engine.threads  # the worker really runs with its setting
    assert worker_threads(3) == 3
    with pytest.raises(ValueError, match="at least 1"):
        worker_threads(0)
