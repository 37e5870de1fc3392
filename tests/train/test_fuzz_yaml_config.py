"""Fuzzing `lorakit train -c file.yaml` with hypothesis: any YAML gives a well-typed config or one line.

Property: `TrainConfig.resolve` returns a config whose every setting has its declared type, or
raises one line naming the file; no YAML tag runs code, and an alias bomb is refused quickly.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from lorakit.errors import LorakitError
from lorakit.train.config import NUMBERS, OPTIONAL, TrainConfig
from tests.test_fuzz_inputs import FUZZ, check_refusal, json_values

FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
TAGS = ("!!python/object/apply:os.system ['echo pwned']", "!!python/name:os.system", "!!python/object:object {}",
        "!!binary aGVsbG8=", "!!set {a, b}", "!!timestamp 2001-12-14", "!!float nan", "!!int 0x1F", "!!str 5")


def bomb(levels: int = 9, key: str = "model") -> str:
    """'Billion laughs': each anchor is a list of nine aliases of the previous one."""
    lines = ["  - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return f"{key}:\n" + "\n".join(lines) + "\n"


def documents() -> st.SearchStrategy[str]:
    """YAML texts: mappings of real and unknown settings to any value, tags, aliases, non-mappings."""
    names = st.sampled_from(FIELDS) | st.sampled_from(("speed_plan", "config", "rank-x", "1", "")) | st.text(max_size=5)
    mapping = st.dictionaries(names | st.integers() | st.none(), json_values(), max_size=4).map(
        lambda d: yaml.safe_dump(d, allow_unicode=True))
    tagged = st.tuples(st.sampled_from(FIELDS), st.sampled_from(TAGS)).map(lambda kv: f"{kv[0]}: {kv[1]}\n")
    raw = st.sampled_from(["- 1\n- 2\n", "5", "", "~", "a: [1, 2\n", "---\na: 1\n---\nb: 2\n", "[" * 1_000,
                           "rank: " + "9" * 4_400 + "\n", bomb(), bomb(key="rank"), bomb(key="targets")])
    return mapping | tagged | raw | st.text(max_size=40)


def well_typed(cfg: TrainConfig) -> None:
    """Every setting has the type its default declares (what the rest of `lorakit train` assumes)."""
    for f in dataclasses.fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name in NUMBERS:
            assert isinstance(value, (int, float)) and not isinstance(value, bool) or (
                value is None and f.name in OPTIONAL), (f.name, value)
            if NUMBERS[f.name][0] is int:
                assert value is None or isinstance(value, int), (f.name, value)
        elif isinstance(f.default, bool):
            assert isinstance(value, bool), (f.name, value)
        elif f.name == "seed":
            assert isinstance(value, int) and not isinstance(value, bool), (f.name, value)
        else:
            assert isinstance(value, str) or (value is None and f.default is None), (f.name, value)


@FUZZ
@given(documents() | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_any_yaml_gives_a_well_typed_config_or_one_line_naming_the_file(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        started = time.monotonic()
        result = check_refusal(lambda: TrainConfig.resolve(str(path), {}), str(path), Path(tmp))
        assert time.monotonic() - started < 10, "a config file took this long to refuse"
        if not isinstance(result, LorakitError):
            well_typed(result)


@pytest.mark.parametrize(("text", "words"), [
    ("- rank\n", "a mapping"),
    ("1: 2\n", "setting names"),
    ("~: 2\n", "setting names"),
    ("rank: !!python/object/apply:os.system ['echo pwned']\n", "python/object"),
    ("a: [1, 2\n", "not valid YAML"),
    ("model: 5\n", "'model'"),
    ("rslora: 'yes'\n", "'rslora'"),
    ("seed: abc\n", "'seed'"),
    ("rank: abc\n", "rank"),
    ("schedule: '5'\n", "'schedule'"),
    ("method: qlora2\n", "'method'"),
    ("rank: " + "9" * 4_400 + "\n", "too many digits"),
    ("[" * 1_000, "nested"),
    (bomb(key="rank"), "rank"),
])
def test_bad_config_files_are_one_line_naming_file_and_setting(tmp_path, text, words):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(LorakitError) as info:
        TrainConfig.resolve(str(path), {})
    message = str(info.value)
    assert "\n" not in message and str(path) in message and words in message, message
    assert len(message) < 600, "an error message grew with the input"


def test_a_binary_config_file_is_one_line(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_bytes(b"\xff\xfe\x00rank: 4")
    with pytest.raises(LorakitError, match=r"train.yaml: .*UTF-8"):
        TrainConfig.resolve(str(path), {})


def test_flags_still_override_a_well_typed_file(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("rank: 8\nlr: 1e-4\nrslora: true\nmodel: m\n")
    cfg = TrainConfig.resolve(str(path), {"rank": 4})
    assert (cfg.rank, cfg.lr, cfg.rslora, cfg.model) == (4, 1e-4, True, "m")


def test_the_config_a_run_writes_reads_back_equal(tmp_path):
    """train_config.yaml (every setting, nulls and the speed plan included) passes the type checks."""
    cfg = TrainConfig(model="m", data="d", out="o", max_steps=8, threads=1, resume="auto", attention="eager")
    assert TrainConfig.resolve(str(cfg.write(tmp_path, speed_plan={"precision": "fp32"})), {}) == cfg
