"""`lorakit eval` on a tiny model: report contents, self-contained HTML, bad input."""

from __future__ import annotations

import argparse
import base64
import json
import re
from pathlib import Path

import pytest
import torch

from lorakit.adapters import LoraConfig, add_adapter, save_adapter
from lorakit.errors import AdapterLoadError, LorakitError
from lorakit.eval import run_eval
from lorakit.eval.cli import register
from lorakit.eval.dataset import read_split
from lorakit.models import load_model
from tests.adapters.helpers import randomize_adapter

SMALL = dict(max_eval_tokens=150, n_style_prompts=4, max_new_tokens=8, drift_tokens=6)


def save_tiny_adapter(base: Path, out: Path, randomize: bool) -> Path:
    model, _ = load_model(base, with_tokenizer=False)
    torch.manual_seed(0)
    add_adapter(model, LoraConfig(r=4, alpha=8, target_modules="all-linear"))
    if randomize:
        randomize_adapter(model)
    save_adapter(model, out)
    return out


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    adapters = {"zero": save_tiny_adapter(tiny_model_dir, root / "zero", randomize=False),
                "style": save_tiny_adapter(tiny_model_dir, root / "style", randomize=True)}
    (root / "style" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 5.0 - 0.1 * s}) + "\n" for s in range(1, 6)) + json.dumps(
        {"step": 5, "eval_loss": 4.7, "eval_ppl": 110.0}) + "\n")
    report = run_eval(str(tiny_model_dir), adapters, prepared, root / "report", precision="fp32", **SMALL)
    return report, root / "report"


def test_report_covers_every_book_and_target(evaluated, prepared):
    report, out = evaluated
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    books = {r.book for r in read_split(prepared, "test")}
    assert set(report["perplexity"]) == {"base", "zero", "style"}
    for target, ppl in report["perplexity"].items():
        assert set(ppl["books"]) == books
        assert ppl["overall"]["tokens"] == sum(b["tokens"] for b in ppl["books"].values())
    assert set(report["style"]["targets"]) == {"base", "zero", "style"}
    assert set(report["drift"]["change_pct"]) == {"zero", "style"}
    assert [s["task"] for s in report["samples"]] == ["theme", "character", "scene"]
    assert all(set(s["outputs"]) == {"base", "zero", "style"} for s in report["samples"])
    assert report["training"]["style"]["eval"] == [[5, 4.7]] and report["training"]["zero"] is None


def test_an_untrained_adapter_changes_nothing_and_a_trained_one_does(evaluated):
    report, _ = evaluated
    ppl = {t: v["overall"]["nll"] for t, v in report["perplexity"].items()}
    assert ppl["zero"] == pytest.approx(ppl["base"], rel=1e-6)  # LoRA B starts at zero: no change
    assert report["drift"]["change_pct"]["zero"] == pytest.approx(0.0, abs=1e-4)
    assert ppl["style"] != pytest.approx(ppl["base"], rel=1e-3)
    assert report["drift"]["change_pct"]["style"] != pytest.approx(0.0, abs=1e-3)
    base_gens = [g["outputs"]["base"] for g in report["generations"]]
    assert base_gens == [g["outputs"]["zero"] for g in report["generations"]]  # same seed, same model


def test_bf16_eval_moves_perplexity_by_rounding_only(evaluated, tiny_model_dir, prepared, tmp_path):
    """--precision bf16: the base in bf16, the adapters fp32. A zero adapter still changes nothing, and
    every perplexity stays within bf16 rounding of the fp32 eval."""
    fp32, out = evaluated
    adapters = {name: Path(path) for name, path in fp32["adapters"].items()}
    bf16 = run_eval(str(tiny_model_dir), adapters, prepared, tmp_path / "bf16", precision="bf16", **SMALL)
    assert bf16["settings"]["precision"] == "bf16" and fp32["settings"]["precision"] == "fp32"
    nll = {t: v["overall"]["nll"] for t, v in bf16["perplexity"].items()}
    assert nll["zero"] == nll["base"]
    for target, value in nll.items():
        ref = fp32["perplexity"][target]["overall"]["nll"]
        assert value != ref  # bf16 really ran
        assert value == pytest.approx(ref, rel=1e-4), target  # measured: at most 9.4e-6 relative


def test_per_book_token_cap(evaluated):
    report, _ = evaluated
    for book in report["perplexity"]["base"]["books"].values():
        assert 0 < book["tokens"] <= SMALL["max_eval_tokens"] + 200  # at least one sample, then the cap


def test_html_is_self_contained(evaluated):
    _, out = evaluated
    html = (out / "report.html").read_text()
    sources = re.findall(r'src="([^"]+)"', html)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    for reference in ("http:", "https:", "//", "href=", "url(", "@import", "<link", "<script", "<iframe"):
        assert reference not in text, f"report.html refers outside itself: {reference}"
    assert len(sources) >= 4  # loss curve, perplexity, style, drift
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_generated_text_is_escaped(evaluated):
    report, out = evaluated
    html = (out / "report.html").read_text()
    assert "<script" not in html
    prompt = report["samples"][0]["prompt"]
    assert prompt.split("\n")[0].replace("&", "&amp;") in html


def test_empty_test_split_is_refused_before_loading(tiny_model_dir, prepared, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "valid"):
        (data / f"{split}.jsonl").write_text((prepared / f"{split}.jsonl").read_text())
    (data / "test.jsonl").write_text("")
    with pytest.raises(LorakitError, match="test.jsonl: no test samples"):
        run_eval(str(tmp_path / "no-such-model"), {}, data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_adapters_are_refused(tiny_model_dir, prepared, tmp_path):
    import transformers as tf

    other = tmp_path / "other"
    tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=49152, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2)).save_pretrained(other)
    save_tiny_adapter(other, tmp_path / "foreign", randomize=True)
    with pytest.raises(AdapterLoadError, match="different base model"):
        run_eval(str(tiny_model_dir), {"foreign": tmp_path / "foreign"}, prepared, tmp_path / "out", **SMALL)
    with pytest.raises(LorakitError, match="reserved"):
        run_eval(str(tiny_model_dir), {"base": tmp_path / "foreign"}, prepared, tmp_path / "out", **SMALL)
    with pytest.raises(AdapterLoadError, match="adapter_config.json: not found"):
        run_eval(str(tiny_model_dir), {"x": tmp_path}, prepared, tmp_path / "out", **SMALL)
    assert not (tmp_path / "out").exists()


def test_cli_eval(tiny_model_dir, prepared, tmp_path, capsys):
    save_tiny_adapter(tiny_model_dir, tmp_path / "mine", randomize=True)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", "--model", str(tiny_model_dir), "--adapter", str(tmp_path / "mine"),
                              "--data", str(prepared), "--out", str(tmp_path / "rep"), "--max-eval-tokens", "60",
                              "--style-prompts", "3", "--max-new-tokens", "4", "--drift-tokens", "4"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "mine: ppl" in out and "drift" in out and str(tmp_path / "rep" / "report.html") in out
    args = parser.parse_args(["eval", "--data", str(prepared), "--adapter", "a=x", "--adapter", "a=y"])
    with pytest.raises(LorakitError, match="given twice"):
        args.func(args)
    with pytest.raises(SystemExit):  # refused while parsing, before any model loads
        parser.parse_args(["eval", "--data", str(prepared), "--max-eval-tokens", "0"])
    assert "--max-eval-tokens" in capsys.readouterr().err
