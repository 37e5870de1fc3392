"""The planner against a breakdown computed by hand for a tiny Llama config."""

from __future__ import annotations

import json

import pytest
import transformers as tf

from lorakit.adapters import LoraConfig, add_adapter, trainable_report
from lorakit.errors import LorakitError
from lorakit.plan import estimate
from lorakit.plan.estimate import FITS, HEAP_RETAINED, NO_FIT, RUNTIME_BYTES, TIGHT
from lorakit.plan.speed import resolve_speed
from tests.conftest import tiny_model

# tests/conftest.py's tiny llama: vocab 96, hidden 32, intermediate 48, 2 layers, 4 heads of 8, 2 KV heads, tied
CFG = tf.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
# per layer: q 32x32, k 16x32, v 16x32, o 32x32, gate/up 48x32, down 32x48 = 7680; 2 norms of 32
LINEAR = 2 * (1024 + 512 + 512 + 1024 + 3 * 1536)  # 15360
PARAMS = 96 * 32 + LINEAR + 2 * 2 * 32 + 32  # embedding (tied head) + linears + norms + final norm = 18592
# LoRA r=4 on all 7 linears: r * (in + out)
ADAPTER = 2 * 4 * ((32 + 32) + 2 * (32 + 16) + (32 + 32) + 3 * (32 + 48))  # 3712
TOKENS = 2 * 8


def _speed(method: str = "lora", **options):
    """The trainer's speed plan for the tiny Llama with `options` (as `lorakit train` flags)."""
    import torch

    return resolve_speed(model_type="llama", method=method, device=torch.device("cpu"), **options)


def test_lora_breakdown_by_hand():
    est = estimate(CFG, method="lora", batch_size=2, seq_len=8, rank=4, available=10**9,
                   speed=_speed(grad_checkpoint=True))
    assert est.runtime == RUNTIME_BYTES
    assert est.weights == 4 * PARAMS
    assert est.adapter == 4 * ADAPTER and est.gradients == 4 * ADAPTER and est.optimizer == 8 * ADAPTER
    # saved per token per layer: 4H + 2K + A + 3I + 2 = 310, inputs of q/k/v, gate/up, down = 2H + I = 112,
    # seven LoRA A outputs 7r = 28 -> 450 fp32; backward working set 2H + 2I + embedding output H = 192;
    # checkpoints: 2 layers x H
    assert est.activations == TOKENS * (4 * 2 * 32 + 4 * 450 + 4 * 192)
    # chunked loss: one buffer of 16 tokens x 96 vocab, the labelled hidden states and dL/dh for 16 tokens
    assert est.logits == 4 * (TOKENS * 96 + 2 * TOKENS * 32)
    # without --release-memory the C heap keeps freed activations: a measured share of them
    assert est.heap == int(HEAP_RETAINED * (est.activations + est.logits))
    assert est.total == sum([est.runtime, est.weights, est.adapter, est.gradients, est.optimizer,
                             est.activations, est.logits, est.heap])
    released = estimate(CFG, method="lora", batch_size=2, seq_len=8, rank=4, available=10**9,
                        speed=_speed(grad_checkpoint=True, release_memory=True))
    assert released.heap == 0 and released.total == est.total - est.heap


def test_qlora_weights_are_nf4_for_linears_only():
    est = estimate(CFG, method="qlora", batch_size=2, seq_len=8, rank=4, available=10**9)
    nf4 = LINEAR * (0.5 + 1 / 64 + 4 / (64 * 256))  # 4 bits + int8 absmax / 64 + fp32 scale / 16384
    assert est.weights == int(4 * (PARAMS - LINEAR) + nf4)


def test_bf16_lora_holds_its_frozen_linears_in_bf16_and_notes_the_activations():
    fp32 = estimate(CFG, method="lora", batch_size=2, seq_len=8, rank=4, available=10**9)
    bf16 = estimate(CFG, method="lora", batch_size=2, seq_len=8, rank=4, available=10**9,
                    speed=_speed(precision="bf16"))
    assert bf16.weights == 4 * (PARAMS - LINEAR) + 2 * LINEAR  # embedding (the tied head) and norms stay fp32
    assert bf16.total == fp32.total - 2 * LINEAR
    assert fp32.note == "" and "errs high" in bf16.note and "(note)" in bf16.format()
    assert "errs high" in estimate(CFG, method="lora", rank=4, speed=_speed(compile=True), available=10**9).note
    # the speed plan's rule decides: DoRA (planned as lora) and full keep fp32 weights in bf16 runs
    dora = estimate(CFG, method="lora", rank=4, speed=_speed("dora", precision="bf16"), available=10**9)
    assert dora.weights == 4 * PARAMS
    full = estimate(CFG, method="full", rank=4, speed=_speed("full", precision="bf16"), available=10**9)
    assert full.weights == 4 * PARAMS


def test_full_trains_everything_and_keeps_every_layer_without_checkpointing():
    est = estimate(CFG, method="full", batch_size=2, seq_len=8, rank=4, available=10**9,
                   speed=_speed("full", lean_memory=False))
    assert est.adapter == 0 and est.gradients == 4 * PARAMS and est.optimizer == 8 * PARAMS
    # 310 + 112 + two trained norm inputs 2H = 486 per layer, both layers kept
    assert est.activations == TOKENS * (2 * 4 * 486 + 4 * 192)
    lean = estimate(CFG, method="full", batch_size=2, seq_len=8, rank=4, available=10**9, speed=_speed("full"))
    # lean layers: minus SiLU(gate) I = 48 and the recomputed inputs of q/k/v, gate/up, down (2H + I = 112)
    assert lean.activations == TOKENS * (2 * 4 * (486 - 48 - 112) + 4 * 192)


def test_lean_lora_without_checkpointing():
    est = estimate(CFG, method="lora", batch_size=2, seq_len=8, rank=4, available=10**9, speed=_speed())
    # 450 per layer (see the breakdown above) - I - (2H + I) = 290; the first layer's input norm output
    # stays (it reads the frozen embedding): + H once
    assert est.activations == TOKENS * (2 * 4 * 290 + 4 * 192 + 4 * 32)


def test_adapter_size_matches_what_add_adapter_creates():
    model = tiny_model("qwen2")
    add_adapter(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    est = estimate(model.config, method="lora", rank=8, targets=["q_proj", "v_proj"], available=10**9)
    assert est.trainable_params == trainable_report(model).trainable


def test_verdict_thresholds():
    total = estimate(CFG, method="lora", rank=4, available=10**12).total
    assert estimate(CFG, method="lora", rank=4, available=total).verdict == TIGHT
    assert estimate(CFG, method="lora", rank=4, available=int(total / 0.9) + 1).verdict == FITS
    assert estimate(CFG, method="lora", rank=4, available=total - 1).verdict == NO_FIT


def test_longer_chunks_cost_more_and_chunks_cap_the_logits():
    small = estimate(CFG, seq_len=64, batch_size=4, loss_chunk_tokens=32, available=10**9)
    large = estimate(CFG, seq_len=64, batch_size=4, loss_chunk_tokens=4096, available=10**9)
    assert large.logits - small.logits == 4 * (256 - 32) * 96


def test_bad_method_and_sizes_are_one_line_errors():
    with pytest.raises(LorakitError, match="unknown method 'qlora4'"):
        estimate(CFG, method="qlora4")
    with pytest.raises(LorakitError, match="seq_len must be a positive integer"):
        estimate(CFG, seq_len=0)


def test_cli_reads_a_config_json_and_prints_the_breakdown(tmp_path, capsys):
    from lorakit.cli import main

    path = tmp_path / "config.json"
    path.write_text(json.dumps(CFG.to_dict()))
    code = main(["plan", "--model", str(path), "--method", "qlora", "--batch-size", "2", "--seq-len", "8",
                 "--rank", "4", "--targets", "q_proj,v_proj", "--grad-checkpoint"])
    out = capsys.readouterr().out
    assert code == 0
    for word in ("weights", "adapter", "gradients", "optimizer", "activations", "logits", "total", "verdict: fits"):
        assert word in out
    assert "speed plan: cpu, fp32" in out and "grad_checkpoint" in out  # the trainer's resolved plan
    assert "lean off: gradient checkpointing" in out
    # QLoRA returns freed memory by default (auto); LoRA keeps it in the C heap unless told
    assert "heap" not in out and "release_memory" in out
    main(["plan", "--model", str(path), "--method", "qlora", "--no-release-memory"])
    assert "heap" in capsys.readouterr().out
    main(["plan", "--model", str(path)])
    assert "heap" in capsys.readouterr().out
    main(["plan", "--model", str(path), "--release-memory"])
    assert "heap" not in capsys.readouterr().out


def test_cli_rejects_a_config_without_model_type(tmp_path, capsys):
    from lorakit.cli import main

    path = tmp_path / "config.json"
    path.write_text("{}")
    assert main(["plan", "--model", str(path)]) == 2
    assert "has no 'model_type'" in capsys.readouterr().err


def _untied(dtype: str) -> tf.Qwen2Config:
    return tf.Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, dtype=dtype)


def test_qlora_untied_fp32_embedding_is_shown_as_mapped_and_counted():
    est = estimate(_untied("float32"), method="qlora", rank=4, available=10**9)
    assert est.mapped == 4 * 96 * 32  # load_quantized keeps it file-backed, read row by row
    # counted in full all the same (how much of it stays resident is the kernel's choice), like
    # a bf16 checkpoint, which is converted to fp32 on load
    as_bf16 = estimate(_untied("bfloat16"), method="qlora", rank=4, available=10**9)
    assert as_bf16.mapped == 0 and as_bf16.weights == est.weights
    assert estimate(CFG, method="qlora", rank=4, available=10**9).mapped == 0  # tied: the head reads it all
