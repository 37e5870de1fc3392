"""Mixed-adapter rows in two matmuls (lorakit.adapters.rows), stop strings, detokenization, sampling."""

from __future__ import annotations

import pytest
import torch

from lorakit.errors import LorakitError
from lorakit.infer.detok import IncrementalDetokenizer, StopMatcher
from lorakit.infer.sampling import Sampler, SamplingParams


def test_mixed_rows_equal_each_row_alone_and_follow_weight_updates(tiny):
    from lorakit.adapters import LoraConfig, adapter_rows, add_adapter, adapter_parameters, disable_adapters, set_adapter

    model = tiny("llama")
    for i, r in enumerate((2, 4, 8)):
        add_adapter(model, LoraConfig(r=r, alpha=3 * r), f"x{i}")
        with torch.no_grad():
            for p in adapter_parameters(model, f"x{i}"):
                p.normal_(0, 0.5)
    ids = torch.randint(1, 96, (5, 6), generator=torch.Generator().manual_seed(0))
    rows = ["x2", None, "x0", "x1", "x2"]

    def alone() -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i, name in enumerate(rows):
                if name is None:
                    with disable_adapters(model):
                        out.append(model(input_ids=ids[i:i + 1]).logits)
                else:
                    set_adapter(model, name)
                    out.append(model(input_ids=ids[i:i + 1]).logits)
        return torch.cat(out)

    def mixed() -> torch.Tensor:
        with torch.inference_mode(), adapter_rows(model, rows):
            return model(input_ids=ids).logits

    torch.testing.assert_close(mixed(), alone(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # an in-place update (as a training step makes) must reach the cached concatenation
        for p in adapter_parameters(model, "x0"):
            p.mul_(-2.0)
    torch.testing.assert_close(mixed(), alone(), rtol=1e-5, atol=1e-5)


def test_mixed_rows_follow_batches_changing_and_adapters_deleted_or_replaced(tiny):
    """The per-layer stack is reused across batches; however it goes stale, each row must still get its own adapter."""
    from lorakit.adapters import LoraConfig, adapter_rows, add_adapter, adapter_parameters, delete_adapter, set_adapter

    model = tiny("llama")

    def add(name: str, r: int, seed: int) -> None:
        add_adapter(model, LoraConfig(r=r, alpha=2 * r), name)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in adapter_parameters(model, name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    for i in range(4):
        add(f"x{i}", 2 + 2 * i, i)
    ids = torch.randint(1, 96, (4, 5), generator=torch.Generator().manual_seed(3))

    def check(rows: list) -> None:
        with torch.inference_mode():
            with adapter_rows(model, rows):
                mixed = model(input_ids=ids).logits
            for i, name in enumerate(rows):
                set_adapter(model, name)
                torch.testing.assert_close(mixed[i], model(input_ids=ids[i:i + 1]).logits[0], rtol=1e-4, atol=1e-4)

    check(["x0", "x1", "x2", "x3"])  # stack of all four
    check(["x3", "x1", "x3", "x1"])  # a subset: the same stack, other columns masked
    check(["x2", "x2", "x2", "x2"])  # one adapter: its own factors
    delete_adapter(model, "x1")      # a gap in the stack
    check(["x0", "x2", "x3", "x0"])
    add("x1", 4, 99)                 # same name and rank, other weights: must not be taken for the old x1
    check(["x1", "x0", "x2", "x1"])
    with torch.no_grad():            # rescaled in place
        for p in adapter_parameters(model, "x0"):
            p.mul_(3.0)
    check(["x1", "x0", "x3", "x0"])


def test_stop_matcher_holds_back_possible_stops():
    m = StopMatcher(["END", "\n\n"])
    assert m.push("hello E") == "hello "   # 'E' may start END
    assert m.push("N") == ""               # 'EN' still may
    assert m.push("ough") == "ENough"      # it was not a stop
    assert m.push(" more\n") == " more"
    assert m.push("\nrest") == "" and m.stopped
    assert m.flush() == ""
    plain = StopMatcher([])
    assert plain.push("abc") == "abc"
    tail = StopMatcher(["xyz"])
    assert tail.push("abx") == "ab" and tail.flush() == "x"


def test_incremental_detokenizer_matches_full_decode():
    from lorakit.models import load_tokenizer

    tok = load_tokenizer()
    text = "Grüße, 世界! Ünïcödé — naïve café 🙂 done."
    prompt = tok("Say:").input_ids
    ids = tok(text, add_special_tokens=False).input_ids
    det = IncrementalDetokenizer(tok, prompt)
    pieces = [det.feed(t) for t in ids]
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in p for p in pieces)


def test_sampling_params_refuse_bad_values():
    for bad in ({"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"stop": [""]}, {"stop": ["s"] * 9}):
        with pytest.raises(LorakitError):
            SamplingParams(**bad)


def test_sampler_seed_and_top_p():
    logits = torch.randn(500, generator=torch.Generator().manual_seed(3))
    a = Sampler(SamplingParams(seed=5))
    b = Sampler(SamplingParams(seed=5))
    assert [a(logits) for _ in range(20)] == [b(logits) for _ in range(20)]
    # a tiny nucleus keeps only the top token: sampling becomes the arg-max
    tiny_p = Sampler(SamplingParams(seed=1, top_p=1e-6))
    assert {tiny_p(logits) for _ in range(20)} == {int(logits.argmax())}
    assert Sampler(SamplingParams(temperature=0))(logits) == int(logits.argmax())
