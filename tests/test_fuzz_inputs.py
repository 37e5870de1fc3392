"""Fuzzing every file lorakit reads: the shared property, its input strategies, and the CLI's last line of defence.

The property, for every reader: it returns, or raises a `LorakitError` whose message is one
line naming the file; nothing on disk changes. The per-area fuzz tests
(tests/*/test_fuzz_*.py) build on the helpers here, and bench/fuzz_inputs.py runs the same
properties with many more examples.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from lorakit.cli import main
from lorakit.errors import LorakitError

# fixed seed and a bounded count: `make test` stays fast; bench/fuzz_inputs.py runs thousands
FUZZ = settings(derandomize=True, deadline=None, database=None, max_examples=60,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])

# keys lorakit's readers look at, so generated objects hit the interesting branches often
FIELD_NAMES = ("text", "prompt", "completion", "messages", "role", "content", "meta", "author", "title", "book",
               "translator", "gutenberg_id", "task", "input_ids", "prompt_len")
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats() | st.text(max_size=12))


def json_values(keys: tuple[str, ...] = FIELD_NAMES) -> st.SearchStrategy[Any]:
    """Arbitrary JSON values (NaN and infinities included, as Python's json writes them)."""
    names = st.sampled_from(keys) | st.text(max_size=6)
    return st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(names, kids, max_size=4),
                        max_leaves=10)


# texts that defeat a naive json.loads: nesting past the recursion limit, a number past Python's
# int-string limit, invalid UTF-8
hostile_json = st.sampled_from([
    "[" * 3_000 + "]" * 3_000,
    '{"text": ' * 2_000 + '"x"' + "}" * 2_000,
    '{"text": "x", "n": ' + "9" * 4_400 + "}",
    "9" * 4_400,
    '{"r": 1e999999}',
])


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for a folder): what 'nothing on disk changed' compares."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def check_refusal(call: Callable[[], Any], names: str, root: Path | None = None) -> Any:
    """Run `call`: it returns (its value is returned) or raises a one-line LorakitError naming `names`.

    Anything else (a traceback, a multi-line message, a message that does not say which file,
    a change under `root`) fails with an AssertionError saying what.
    """
    before = tree(root) if root is not None else None
    try:
        result = call()
    except LorakitError as exc:
        message = str(exc)
        assert message.strip() and "\n" not in message, f"not one line: {message!r}"
        assert names in message, f"does not name {names}: {message}"
        result = exc
    except Exception as exc:  # noqa: BLE001 - any other exception is the defect this looks for
        raise AssertionError(f"traceback instead of one line: {type(exc).__name__}: {str(exc)[:300]}") from exc
    if root is not None:
        assert tree(root) == before, "a failed load changed files on disk"
    return result


def test_check_refusal_tells_a_traceback_from_a_clean_refusal(tmp_path):
    (tmp_path / "f").write_text("x")
    assert isinstance(check_refusal(lambda: (_ for _ in ()).throw(LorakitError("f: bad")), "f", tmp_path), LorakitError)
    with pytest.raises(AssertionError, match="traceback"):
        check_refusal(lambda: int("x"), "f")
    with pytest.raises(AssertionError, match="one line"):
        check_refusal(lambda: (_ for _ in ()).throw(LorakitError("f: bad\nsecond")), "f")
    with pytest.raises(AssertionError, match="changed files"):
        check_refusal(lambda: (tmp_path / "f").write_text("y"), "f", tmp_path)


def _lint_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps({"text": "ab", "prompt": "a", "completion": "b"}) + "\n")
    return data


def test_an_unexpected_exception_from_a_reader_is_one_line_with_a_debug_hint(tmp_path, monkeypatch, capsys):
    """A bug the readers do not foresee still ends in one line (exit 1), not a traceback."""
    import lorakit.data.schema as schema

    def broken(raw, need):  # stands in for a reader defect nobody has found yet
        raise RuntimeError("simulated reader defect\nsecond line of its message")

    monkeypatch.setattr(schema, "_parse", broken)
    monkeypatch.delenv("LORAKIT_DEBUG", raising=False)
    assert main(["data", "lint", str(_lint_dir(tmp_path))]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "RuntimeError" in err[0] and "simulated reader defect" in err[0] and "LORAKIT_DEBUG=1" in err[0]


def test_the_debug_variable_shows_the_traceback(tmp_path, monkeypatch):
    import lorakit.data.schema as schema

    monkeypatch.setattr(schema, "_parse", lambda raw, need: (_ for _ in ()).throw(RuntimeError("defect")))
    monkeypatch.setenv("LORAKIT_DEBUG", "1")
    with pytest.raises(RuntimeError, match="defect"):
        main(["data", "lint", str(_lint_dir(tmp_path))])


def test_a_lorakit_error_is_printed_as_one_line_even_if_it_holds_a_newline(tmp_path, monkeypatch, capsys):
    """The CLI's promise holds whatever a message carries (a wrapped library message may hold newlines)."""
    import lorakit.data.schema as schema

    monkeypatch.setattr(schema, "_parse", lambda raw, need: (_ for _ in ()).throw(LorakitError("x.jsonl: bad\n  here")))
    assert main(["data", "lint", str(_lint_dir(tmp_path))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lorakit: error: x.jsonl: bad here"]


def test_a_real_bad_yaml_through_the_cli_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rank: !!python/object/apply:os.system ['echo pwned']\n")
    assert main(["train", "-c", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(cfg) in err[0], err
    assert not (tmp_path / "out").exists()

