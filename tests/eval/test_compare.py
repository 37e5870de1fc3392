"""`lorakit compare` on a tiny model: one token budget, a fresh process per method, a report."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from lorakit.errors import LorakitError
from lorakit.eval.cli import register
from lorakit.eval.compare import METHODS, Method, run_compare, trainable_counts
from lorakit.models import load_model

CHOSEN = tuple(m for m in METHODS if m.name in ("full", "lora-r4", "dora-r8", "prefix-n20", "prompt-n20"))


def linear_shapes(model) -> list[tuple[int, int]]:
    import torch

    return [(m.in_features, m.out_features) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()]


@pytest.fixture(scope="module")
def compared(tiny_model_dir, prepared, tmp_path_factory):
    """One run through the CLI handler (which calls `run_compare`)."""
    out = tmp_path_factory.mktemp("compare")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["compare", "--model", str(tiny_model_dir), "--data", str(prepared), "--out", str(out),
                              "--steps", "2", "--methods", ",".join(m.name for m in CHOSEN), "--batch-size", "2",
                              "--max-seq-len", "64", "--max-eval-tokens", "100", "--precision", "bf16"])
    assert args.func(args) == 0
    return json.loads((out / "compare.json").read_text()), out


def test_every_method_trains_the_same_tokens(compared):
    result, out = compared
    assert [r["name"] for r in result["runs"]] == [m.name for m in CHOSEN]
    assert {r["steps"] for r in result["runs"]} == {2}
    assert len({r["tokens"] for r in result["runs"]}) == 1  # same batches, same labelled tokens
    assert result["precision"] == "bf16"  # every method trained as `lorakit train --precision bf16`
    for m in CHOSEN:
        assert "precision: bf16" in (out / "runs" / m.name / "train_config.yaml").read_text()


def test_trainable_counts(compared, tiny_model_dir):
    result, _ = compared
    model, _ = load_model(tiny_model_dir, with_tokenizer=False)
    total = sum(p.numel() for p in model.parameters())
    runs = {r["name"]: r for r in result["runs"]}
    lora = sum(4 * (i + o) for i, o in linear_shapes(model))
    dora = sum(8 * (i + o) + o for i, o in linear_shapes(model))  # + one magnitude per output feature
    assert (runs["full"]["trainable"], runs["lora-r4"]["trainable"], runs["dora-r8"]["trainable"]) == (total, lora, dora)
    cfg = model.config
    kv_dim = cfg.num_key_value_heads * cfg.hidden_size // cfg.num_attention_heads  # a key or value row, GQA
    assert runs["prefix-n20"]["trainable"] == 20 * cfg.num_hidden_layers * 2 * kv_dim  # keys and values per layer
    assert runs["prompt-n20"]["trainable"] == 20 * cfg.hidden_size  # one embedding per virtual token
    assert runs["prefix-n20"]["virtual_tokens"] == 20 and runs["prefix-n20"]["rank"] is None
    head = model.get_output_embeddings().weight.numel()  # untied from the input embedding, then trained alone
    assert trainable_counts(str(tiny_model_dir), Method("head", "head")) == (head, total)
    assert runs["full"]["trainable_pct"] == pytest.approx(100.0)
    assert result["base"]["params"] == total


def test_measurements(compared):
    result, out = compared
    base = result["base"]["perplexity"]["overall"]
    for r in result["runs"]:
        assert r["peak_rss_mb"] > 50 and r["train_seconds"] > 0
        assert r["perplexity"]["overall"]["tokens"] == base["tokens"]  # the same held-out tokens for all
        run_dir = out / "runs" / r["name"]
        weights = list(run_dir.glob("*.safetensors"))
        assert r["saved_bytes"] == sum(f.stat().st_size for f in weights) > 0
    runs = {r["name"]: r for r in result["runs"]}
    assert runs["lora-r4"]["saved_bytes"] < runs["dora-r8"]["saved_bytes"] < runs["full"]["saved_bytes"]
    assert json.loads((out / "compare.json").read_text())["steps"] == 2
    for name in ("prefix-n20", "prompt-n20"):  # PEFT's file: the trained tokens only, fp32
        assert runs[name]["saved_bytes"] < 4 * runs[name]["trainable"] + 2**12


@pytest.mark.parametrize("name", ["lora-r4", "prefix-n20", "prompt-n20"])
def test_drift_is_evals_drift_of_the_saved_adapter(compared, tiny_model_dir, name):
    """compare scores each run on the base's answers as `lorakit eval` does: the same change in NLL."""
    from lorakit.eval.drift import drift
    from lorakit.infer.virtual_rows import load_any_adapter

    result, out = compared
    model, tok = load_model(tiny_model_dir)
    load_any_adapter(model, out / "runs" / name, name)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    expected = drift(model, tok, [name], pad_id, result["drift_tokens"])
    run = next(r for r in result["runs"] if r["name"] == name)
    assert result["base"]["drift_nll"] == pytest.approx(expected["nll"]["base"], rel=1e-6)
    assert run["drift_pct"] == pytest.approx(expected["change_pct"][name], rel=1e-5, abs=1e-6)


def test_virtual_runs_are_scored_with_their_tokens_in_front(compared):
    """Prefix/prompt runs are scored with their tokens in front (scored without them, the NLL would be the base's)."""
    result, _ = compared
    base = result["base"]["perplexity"]["overall"]
    for r in result["runs"]:
        if r["virtual_tokens"]:
            assert r["perplexity"]["overall"]["tokens"] == base["tokens"]  # only real tokens scored
            assert r["perplexity"]["overall"]["nll"] != base["nll"]


def test_compare_html_is_self_contained(compared):
    _, out = compared
    html = (out / "compare.html").read_text()
    sources = re.findall(r'src="([^"]+)"', html)
    assert len(sources) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert not any(ref in text for ref in ("http:", "https:", "//", "href=", "<script"))
    for m in CHOSEN:
        assert f"<td class=\"l\">{m.name}</td>" in html


def test_budget_too_small_is_refused_after_calibrating(tiny_model_dir, prepared, tmp_path):
    with pytest.raises(LorakitError, match="--budget-minutes"):
        run_compare(str(tiny_model_dir), prepared, tmp_path, budget_minutes=0.01,
                    methods=(Method("lora-r4", "lora", rank=4),), batch_size=2, max_seq_len=32, max_eval_tokens=50)


def test_cli_refuses_bad_flags(prepared, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit):  # refused while parsing, before any model loads
        parser.parse_args(["compare", "--data", str(prepared), "--steps", "0"])
    assert "--steps: must be a positive integer" in capsys.readouterr().err
    args = parser.parse_args(["compare", "--data", str(prepared), "--methods", "lora-r4,qlora-r2"])
    with pytest.raises(LorakitError, match="choose from full, head"):
        args.func(args)
