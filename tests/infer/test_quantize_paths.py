"""`--quantize nf4|int8` on the inference and merge paths: generate, the serving engine, merge.

All three load the base through `lorakit.quant.load_base_model`; with a method given, the linears
are quantized as they are read (the fp32 model is never built) and adapters wrap them.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from lorakit.cli import main
from lorakit.errors import LorakitError
from lorakit.quant import QuantLinear, dequantize_model, load_base_model, quantize_model, quantized_layers
from tests.infer.test_engine import reference_greedy, run_all


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _with_adapter(model_dir, adapter_dir, quantize):
    from lorakit.adapters import load_adapter

    model, tok = load_base_model(model_dir, quantize)
    load_adapter(model, adapter_dir, "default")
    return model, tok


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    """A tiny Llama at transformers' default init scale (weights ~N(0, 0.02)) with SmolLM2's tokenizer,
    and a LoRA adapter of the same scale beside it (factors ~N(0, 0.1))."""
    import transformers as tf

    from lorakit.adapters import LoraConfig, add_adapter, save_adapter
    from lorakit.models import load_tokenizer
    from tests.adapters.helpers import randomize_adapter
    from tests.infer.conftest import VOCAB

    root = tmp_path_factory.mktemp("plain-llama")
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = tf.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(root / "model")
    load_tokenizer().save_pretrained(root / "model")
    add_adapter(model, LoraConfig(r=4, alpha=8, target_modules="all-linear"))
    randomize_adapter(model, seed=3)
    save_adapter(model, root / "style")
    return root


def test_generate_nf4_is_the_nf4_models_greedy_answer_and_close_to_fp32(plain_dir, capsys, monkeypatch):
    import lorakit.models
    from lorakit.infer.engine import eos_token_ids
    from lorakit.infer.generate import encode

    def no_dense_load(*_args, **_kwargs):
        raise AssertionError("--quantize nf4 loaded the dense fp32 model")

    with monkeypatch.context() as m:  # the quantized path must never build the fp32 model
        m.setattr(lorakit.models, "load_model", no_dense_load)
        code = main(["generate", "--model", str(plain_dir / "model"), "--quantize", "nf4", "--prompt", "Hello",
                     "--raw", "--temperature", "0", "--max-new-tokens", "8", "--adapter", str(plain_dir / "style")])
    out = capsys.readouterr().out
    assert code == 0

    nf4, tok = _with_adapter(plain_dir / "model", plain_dir / "style", "nf4")
    fp32, _ = _with_adapter(plain_dir / "model", plain_dir / "style", None)
    layers = quantized_layers(nf4)
    assert len(layers) == 14 and all(layer.method == "nf4" for _, layer in layers)
    prompt = encode(tok, "Hello", None, None, raw=True)
    greedy = reference_greedy(nf4, prompt, 8, eos_token_ids(nf4, tok))
    assert greedy and out.strip() == tok.decode(greedy, skip_special_tokens=True).strip()

    # Logits over prompt + greedy answer, NF4 base vs fp32 base (same adapter). Bound: to first
    # order each of the L = 14 quantized linears perturbs the residual stream by its relative weight
    # error eps_l = ||W - deq(W)|| / ||W|| (NF4, blocks of 64, Gaussian weights: ~0.09) and
    # independent errors add in quadrature: ||dlogits|| / ||logits|| <= sqrt(L) * max eps_l
    # (sqrt(14) * 0.09 ~ 0.35; measured ~0.1). It is the bound tests/quant uses for the QLoRA forward.
    # First order needs weights of ordinary scale: on the serving fixture (weights ~N(0, 0.3), peaked
    # softmaxes) NF4 moves the logits by ~0.6, hence this separate default-init model.
    fp32_modules = dict(fp32.named_modules())
    eps = [_rel(layer.dequantize(), fp32_modules[name].weight) for name, layer in layers]
    assert 0.05 < max(eps) < 0.12  # NF4's error on Gaussian weights, not a broken quantizer
    ids = torch.tensor([prompt + greedy])
    with torch.no_grad():
        got, expected = nf4(input_ids=ids).logits, fp32(input_ids=ids).logits
    err = _rel(got, expected)
    assert 0 < err <= math.sqrt(len(eps)) * max(eps), err


@pytest.mark.parametrize("method", ["nf4", "int8"])
def test_engine_on_quantized_base_mixed_batch_equals_alone(tiny_dir, adapter_root, method):
    from lorakit.adapters import set_adapter
    from lorakit.infer.cli import _load  # what `lorakit serve --quantize` runs at start-up
    from lorakit.infer.engine import Engine
    from lorakit.infer.sampling import SamplingParams

    specs = [f"a{i}={adapter_root / f'a{i}'}" for i in (0, 1, 3)]  # a3 adapts q/v only
    model, tok, names, _ = _load(tiny_dir, specs, method)
    assert names == ["a0", "a1", "a3"]
    assert {type(m.base_layer).__name__ for n, m in model.named_modules() if n.endswith("q_proj")} == \
        {"NF4Linear" if method == "nf4" else "Int8Linear"}
    engine = Engine(model, tok, max_batch=4, max_context=96, prefill_chunk=5)
    try:
        ids, other = tok("Tell me a story").input_ids, tok("A B C D").input_ids
        greedy = SamplingParams(max_tokens=10, temperature=0)
        alone = run_all(engine, [(ids, "a0", greedy)])[0]
        mixed = run_all(engine, [(other, None, greedy), (ids, "a1", greedy), (ids, "a0", greedy),
                                 (other, "a3", greedy)])
        text = lambda events: "".join(e.text for e in events if e.kind == "token")  # noqa: E731
        assert text(alone) and text(mixed[2]) == text(alone)
        assert len({text(ev) for ev in mixed[1:3]}) == 2  # the rows really ran different adapters
        set_adapter(model, "a0")  # the engine is idle: the cached batched answer = full recompute
        assert text(alone) == tok.decode(reference_greedy(model, ids, 10, engine.eos_ids), skip_special_tokens=True)
    finally:
        engine.close()


def test_merge_nf4_equals_dequantized_base_plus_delta_in_plain_transformers(plain_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from lorakit.adapters import LoraLinear, load_adapter
    from lorakit.merge import merge_to_dir
    from lorakit.models import load_model

    out = merge_to_dir(plain_dir / "model", plain_dir / "style", tmp_path / "merged", "float32", quantize="nf4")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any(isinstance(m, QuantLinear) for m in merged.modules())
    assert json.loads((out / "lorakit_merge.json").read_text())["base_quantization"] == "nf4"

    # the reference: the fp32 checkpoint with its linears NF4-rounded (quantize, dequantize), adapter unmerged
    ref, tok = load_model(plain_dir / "model")
    dequantize_model(quantize_model(ref, "nf4"))
    load_adapter(ref, plain_dir / "style", "default")
    ids = torch.tensor([tok("Tell me a story about the sea").input_ids])
    with torch.no_grad():
        expected, got = ref(input_ids=ids).logits, merged(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    merged_modules = dict(merged.named_modules())
    for name, layer in ref.named_modules():  # each weight: dequantized base + delta, computed in fp32
        if isinstance(layer, LoraLinear):
            torch.testing.assert_close(merged_modules[name].weight,
                                       layer.base_layer.weight + layer.delta_weight("default"), atol=1e-6, rtol=0)

    # without --quantize the delta lands on the fp32 weights: a different model, off by the NF4 error
    dense = merge_to_dir(plain_dir / "model", plain_dir / "style", tmp_path / "dense", "float32")
    with torch.no_grad():
        dense_logits = AutoModelForCausalLM.from_pretrained(dense).eval()(input_ids=ids).logits
    assert _rel(got, dense_logits) > 1e-2  # measured 0.13
    assert json.loads((dense / "lorakit_merge.json").read_text())["base_quantization"] == "none"


def test_merge_nf4_casts_once_to_the_requested_dtype(tiny_dir, adapter_root, tmp_path):
    from safetensors import safe_open

    from lorakit.merge import merge_to_dir

    f32 = merge_to_dir(tiny_dir, adapter_root / "a3", tmp_path / "f32", "float32", quantize="nf4")
    bf16 = merge_to_dir(tiny_dir, adapter_root / "a3", tmp_path / "bf16", "bfloat16", quantize="nf4")
    with safe_open(f32 / "model.safetensors", "pt") as a, safe_open(bf16 / "model.safetensors", "pt") as b:
        assert a.keys() == b.keys()
        for key in a.keys():  # adapted (q/v) and unadapted linears alike: fp32 result, cast once
            assert b.get_tensor(key).dtype == torch.bfloat16
            assert torch.equal(b.get_tensor(key), a.get_tensor(key).to(torch.bfloat16)), key
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.parametrize("command", ["generate", "serve"])
def test_bad_quantize_value_is_a_one_line_error(tiny_dir, capsys, command):
    extra = ["--prompt", "x"] if command == "generate" else []
    code = main([command, "--model", str(tiny_dir), "--quantize", "nf3", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--quantize 'nf3': use one of none, nf4, int8" in err


def test_merge_refuses_a_bad_quantize_value_before_loading(tiny_dir, adapter_root, tmp_path):
    from lorakit.merge import merge_to_dir

    with pytest.raises(LorakitError, match="--quantize 'fp8': use one of none, nf4, int8"):
        merge_to_dir(tiny_dir, adapter_root / "a0", tmp_path / "m", quantize="fp8")
    assert not (tmp_path / "m").exists()


def test_load_base_model_none_is_the_dense_fp32_model(tiny_dir):
    for value in (None, "none"):
        model, tok = load_base_model(tiny_dir, value, with_tokenizer=False)
        assert tok is None and not quantized_layers(model)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert isinstance(model.get_submodule("model.layers.0.mlp.down_proj"), nn.Linear)
