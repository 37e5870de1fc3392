"""`lorakit export` on bad input: one line each, nothing written, what was there kept."""

from __future__ import annotations

import pytest

from lorakit.adapters import LoraConfig, add_adapter, save_adapter
from lorakit.cli import main
from tests.adapters.helpers import randomize_adapter
from tests.conftest import tiny_model
from tests.export.tiny import tiny_folder_of


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny llama folder (SmolLM2's tokenizer) and an adapter trained on it."""
    root = tmp_path_factory.mktemp("base")
    folder, model = tiny_folder_of("llama", root / "model")
    add_adapter(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    randomize_adapter(model)
    save_adapter(model, root / "ad", base_model_name_or_path=str(folder))
    return folder, root / "ad"


def _fails_in_one_line(argv, capsys) -> str:
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err, err
    return err


@pytest.mark.parametrize("merged", [False, True])
def test_an_adapter_for_another_base_is_refused_before_writing(merged, base, tmp_path, capsys):
    folder, _ = base
    other = tiny_model("llama")  # hidden 32, vocabulary 96: same names, other shapes
    add_adapter(other, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    save_adapter(other, tmp_path / "other")
    out = tmp_path / "x.gguf"
    argv = ["export", "--adapter", str(tmp_path / "other"), "--model", str(folder), "--out", str(out)]
    err = _fails_in_one_line(argv + (["--merged"] if merged else []), capsys)
    assert "different base" in err
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob("*.Modelfile"))


@pytest.mark.parametrize("merged", [False, True])
def test_an_existing_output_is_kept_unless_force(merged, base, tmp_path, capsys):
    folder, adapter = base
    out = tmp_path / "x.gguf"
    out.write_bytes(b"keep me")
    argv = ["export", "--adapter", str(adapter), "--out", str(out)] + (["--merged"] if merged else [])
    assert "--force" in _fails_in_one_line(argv, capsys)
    assert out.read_bytes() == b"keep me"
    assert main(argv + ["--force"]) == 0
    assert out.read_bytes()[:4] == b"GGUF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.Modelfile", "x.gguf"]  # no temporary left


@pytest.mark.parametrize(("merged", "outtype"), [(False, "q4_0"), (False, "f8"), (True, "q4_k")])
def test_an_outtype_that_is_not_offered_is_refused(merged, outtype, base, tmp_path, capsys):
    _, adapter = base
    argv = ["export", "--adapter", str(adapter), "--out", str(tmp_path / "x.gguf"), "--outtype", outtype]
    err = _fails_in_one_line(argv + (["--merged"] if merged else []), capsys)
    assert outtype in err and "f16" in err
    assert not list(tmp_path.iterdir())
