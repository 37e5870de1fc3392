"""The real SmolLM2-135M: eval runs end to end and merge is exact (issue: merged == unmerged <= 1e-4)."""

from __future__ import annotations

import math

import pytest
import torch

from lorakit.adapters import LoraConfig, adapter_layers, add_adapter, save_adapter
from lorakit.eval import run_eval
from lorakit.merge import merge_to_dir
from lorakit.models import load_model

# slow: eval end to end and merged == adapted are covered on the tiny llama (test_eval_run.py, test_merge.py)
pytestmark = pytest.mark.slow


def small_update(model, std: float = 0.02) -> None:
    """Fill the zero-initialised factors (B) with noise: an update of a trained adapter's size.

    (Noise the size of the weights themselves makes the 30-layer model chaotic, and fp32 rounding
    of W x + s B A x versus (W + s B A) x then grows past any fixed tolerance.)
    """
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for p in layer.adapter_parameters("default").values():
                if not p.any():
                    p.copy_(torch.randn(p.shape, generator=g) * std)


def test_real_model_eval_and_merge(prepared, tmp_path):
    model, tok = load_model()
    torch.manual_seed(0)
    add_adapter(model, LoraConfig(r=8, alpha=16, target_modules="all-linear", use_dora=True))
    small_update(model)
    save_adapter(model, tmp_path / "adapter")
    ids = torch.tensor([tok("The old prince sat by the window and thought of Moscow.").input_ids])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    del model

    report = run_eval(None, {"dora": tmp_path / "adapter"}, prepared, tmp_path / "report", max_eval_tokens=100,
                      n_style_prompts=3, max_new_tokens=16, drift_tokens=8)
    assert math.isfinite(report["perplexity"]["base"]["overall"]["ppl"])
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000

    from transformers import AutoModelForCausalLM

    out = merge_to_dir(None, tmp_path / "adapter", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted, atol=1e-4, rtol=0)
