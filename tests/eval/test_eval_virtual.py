"""`lorakit eval` with prefix- and prompt-tuning folders: each perplexity is PEFT's model loss on the
same tokens (the virtual tokens in front, only the real completion tokens scored)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from lorakit.cli import main
from lorakit.eval import dataset
from tests.infer.test_engine_virtual import save_peft_adapter

MAX_EVAL_TOKENS = 150


def peft_nll(base, folder, data_dir) -> float:
    """Mean NLL per scored token of PEFT's model on the rows `lorakit eval` scores: labels on the
    completion tokens only (never on the first token, which no position predicts)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder).eval()
    rows = dataset.by_book(dataset.test_rows(data_dir, model.config.max_position_embeddings), MAX_EVAL_TOKENS, 0)
    total, count = 0.0, 0
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in (r for rs in rows.values() for r in rs):
            ids = torch.tensor([row.ids])
            labels = ids.clone()
            labels[0, : max(row.prompt_len, 1)] = -100
            n = int((labels[0, 1:] != -100).sum())
            total += float(model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss) * n
            count += n
    return total / count


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer):
    """A tiny llama with peaked logits (the serving tests' init), so that virtual tokens move the loss."""
    from tests.infer.conftest import _tiny_llama

    out = tmp_path_factory.mktemp("peaked-llama")
    _tiny_llama(32, 0).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def report(base_dir, prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-virtual")
    save_peft_adapter(base_dir, root / "pre", "prefix", 1)
    save_peft_adapter(base_dir, root / "pro", "prompt", 2)
    code = main(["eval", "--model", str(base_dir), "--data", str(prepared), "--out", str(root / "report"),
                 "--adapter", f"pre={root / 'pre'}", "--adapter", f"pro={root / 'pro'}", "--precision", "fp32",
                 "--max-eval-tokens", str(MAX_EVAL_TOKENS), "--style-prompts", "3", "--max-new-tokens", "6",
                 "--drift-tokens", "4", "--temperature", "0"])
    assert code == 0
    return json.loads((root / "report" / "report.json").read_text()), root


@pytest.mark.parametrize("name", ["pre", "pro"])
def test_eval_perplexity_equals_peft_s_loss(report, base_dir, prepared, name):
    result, root = report
    nll = result["perplexity"][name]["overall"]["nll"]
    assert nll == pytest.approx(peft_nll(base_dir, root / name, prepared), rel=1e-4)
    assert result["perplexity"][name]["overall"]["ppl"] == pytest.approx(math.exp(nll), rel=1e-9)
    # the virtual tokens matter: the loss moves by more than 10x the tolerance
    assert nll != pytest.approx(result["perplexity"]["base"]["overall"]["nll"], rel=1e-3)


def test_eval_generates_and_scores_drift_with_virtual_adapters(report):
    result, _ = report
    assert set(result["drift"]["change_pct"]) == {"pre", "pro"}
    assert all(set(g["outputs"]) == {"base", "pre", "pro"} for g in result["generations"])
    # greedy: the prefix changes the answers the base gives to the same prompts
    assert any(g["outputs"]["pre"] != g["outputs"]["base"] for g in result["generations"])
