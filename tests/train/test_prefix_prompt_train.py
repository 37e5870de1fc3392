"""`lorakit train --method prefix|prompt` on a tiny llama: the loss falls, only the virtual tokens
train, PEFT loads what is saved (final and best/) with lorakit's logits and loss, resume equals the
uninterrupted run, packing is off, and settings that make no sense are refused."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from lorakit.cli import main
from lorakit.errors import LorakitError
from lorakit.plan.speed import resolve_speed
from lorakit.train.batches import load_samples, padded_batch
from lorakit.train.config import LR, TrainConfig
from lorakit.train.defaults import choose_packing, resolve_data_defaults
from lorakit.train.methods import prepare_model
from lorakit.train.objective import causal_lm_loss
from lorakit.train.progress import read_metrics
from lorakit.train.run import run_training
from lorakit.train.speed import apply_speed_plan
from tests.train.conftest import write_dataset

N = 4  # virtual tokens: small, so every run is quick
# (method, extra settings) of each kind of adapter the trainer makes
KINDS = {"prefix": ("prefix", {}), "prefix-projection": ("prefix", {"prefix_projection": True}),
         "prompt": ("prompt", {}), "prompt-text": ("prompt", {"prompt_init": "text", "prompt_init_text": "Tell a story"})}


def _cfg(model_dir, data, out, kind: str, **kw) -> TrainConfig:
    method, extra = KINDS[kind]
    base = dict(model=str(model_dir), data=str(data), out=str(out), method=method, virtual_tokens=N, batch_size=4,
                max_steps=3, lr=0.1, warmup=0, schedule="constant", seed=0, progress=False, threads=1,
                precision="fp32", mask_prompt=False)
    return TrainConfig(**{**base, **extra, **kw})


def _losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


@pytest.fixture(scope="module")
def learnable_model_dir(tmp_path_factory):
    """The tiny llama of `tiny_model_dir` with weights of std 0.3: with the default init every logit stays
    near 0, so nothing in front of the input can move the loss far."""
    import transformers as tf

    from lorakit.models import load_tokenizer

    out = tmp_path_factory.mktemp("learnable-llama")
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         initializer_range=0.3)
    tf.LlamaForCausalLM(cfg).save_pretrained(out)
    load_tokenizer().save_pretrained(out)
    return out


@pytest.mark.parametrize("kind", ["prefix", "prefix-projection", "prompt"])
def test_the_loss_on_one_repeated_batch_falls(learnable_model_dir, tmp_path, kind):
    """Four samples, --batch-size 4: every step sees one batch, so a working gradient through the virtual
    tokens drives its loss down, block after block. Margins: each 5-step block's mean loss is below the
    previous block's (single steps can rise at these methods' high learning rates: prefix projection's
    did, once in a 3-step window, on an AVX2 CPU), and the last steps' mean is under 0.92 of the first step's (measured with 8 tokens: 0.78
    to 0.86 after 30 steps; a few vectors in front of the input move the loss less than LoRA does)."""
    data = write_dataset(tmp_path / "data", n_train=4, n_valid=2)
    out = tmp_path / "run"
    run_training(_cfg(learnable_model_dir, data, out, kind, max_steps=30, virtual_tokens=8))
    losses = _losses(out)
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    blocks = [sum(losses[i:i + 5]) / 5 for i in range(0, 30, 5)]
    assert all(later < earlier for earlier, later in zip(blocks, blocks[1:])), losses
    assert sum(losses[-3:]) / 3 < 0.92 * losses[0], losses


@pytest.mark.parametrize("kind", ["prefix", "prefix-projection", "prompt"])
def test_only_the_virtual_tokens_train_and_the_base_stays_bit_identical(learnable_model_dir, tmp_path, kind):
    """Steps with the run's own speed plan (fused projections, lean layers): gradients reach the adapter's
    tensors only, and after undoing the plan every base tensor equals the one loaded."""
    from lorakit.models import load_model

    data = write_dataset(tmp_path / "data", n_train=4, n_valid=2)
    cfg = _cfg(learnable_model_dir, data, tmp_path / "out", kind)
    model, tok = load_model(str(learnable_model_dir))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepare_model(model, cfg, tok)
    plan = resolve_speed(model_type="llama", device=torch.device("cpu"), **cfg.speed_settings())
    undo = apply_speed_plan(model, plan)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    want = {"lorakit_prompt.embedding.weight"}
    if kind == "prefix-projection":
        want |= {f"lorakit_prompt.transform.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
    assert trainable == want
    samples, _ = load_samples(data / "train.jsonl")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        loss, _ = causal_lm_loss(model, padded_batch(samples, 0, mask_prompt=False))
        loss.backward()
        got = {n for n, p in model.named_parameters() if p.grad is not None}
        assert got == want and all(bool(p.grad.abs().sum() > 0) for n, p in model.named_parameters() if n in want)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    undo()
    after = model.state_dict()
    assert {k for k in after if not k.startswith("lorakit_prompt.")} == set(before)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name


def _peft_batch(data, prompt: bool):
    """lorakit's padded training batch of the valid samples, and the same rows as PEFT takes them:
    unshifted labels, padding masked out. PEFT's prompt tuning also scores the first real token, from
    the last virtual position; lorakit's loss scores what it scores for LoRA and prefix tuning (every
    token after the first), so that label is ignored here for the comparison."""
    samples, _ = load_samples(data / "valid.jsonl")
    batch = padded_batch(samples, 0, mask_prompt=False)
    lengths = torch.tensor([len(s.ids) for s in samples])
    mask = (torch.arange(batch["input_ids"].shape[1])[None, :] < lengths[:, None]).long()
    labels = batch["input_ids"].masked_fill(mask == 0, -100)
    if prompt:
        labels[:, 0] = -100
    return batch, {"input_ids": batch["input_ids"], "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("kind", list(KINDS))
def test_saved_adapters_load_in_peft_with_lorakits_logits_and_loss(learnable_model_dir, tmp_path, kind):
    """The final adapter and best/ are PEFT folders: PeftModel.from_pretrained gives the logits lorakit's
    loader gives, and PEFT's loss (attention mask, labels with the virtual positions ignored) equals the
    trainer's (no mask: right padding is never attended to; the virtual positions dropped before the head)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorakit.adapters import load_adapter
    from lorakit.models import load_model

    data = write_dataset(tmp_path / "data", n_train=8, n_valid=3)
    out = tmp_path / "run"
    run_training(_cfg(learnable_model_dir, data, out, kind))
    ours_batch, peft_batch = _peft_batch(data, prompt=kind.startswith("prompt"))
    for folder in (out, out / "best"):
        theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(learnable_model_dir), folder).eval()
        ours, _ = load_model(str(learnable_model_dir), with_tokenizer=False)
        load_adapter(ours, folder)
        ours.eval()
        with torch.no_grad():
            peft_out = theirs(**peft_batch)
            logits = ours(input_ids=peft_batch["input_ids"], attention_mask=peft_batch["attention_mask"]).logits
            loss_sum, n = causal_lm_loss(ours, ours_batch)
        assert logits.shape == peft_out.logits.shape
        assert (logits - peft_out.logits).abs().max().item() <= 1e-5
        assert abs(float(loss_sum) / n - float(peft_out.loss)) <= 1e-5
    # the run moved the adapter away from its start: the comparison is of trained values
    from lorakit.adapters import virtual_adapter

    fresh, tok = load_model(str(learnable_model_dir))
    prepare_model(fresh, _cfg(learnable_model_dir, data, out, kind), tok)
    with torch.no_grad():
        start = virtual_adapter(fresh).encoder()
    assert not torch.allclose(start, load_file(out / "adapter_model.safetensors")["prompt_embeddings"])


@pytest.mark.parametrize("kind", ["prefix-projection", "prompt"])
def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(learnable_model_dir, tmp_path, kind):
    data = write_dataset(tmp_path / "data", n_train=16, n_valid=2)
    full = tmp_path / "full"
    run_training(_cfg(learnable_model_dir, data, full, kind, max_steps=6, save_every=3, keep_checkpoints=5,
                      schedule="cosine"))
    checkpoint = full / "checkpoints" / "step-000003"
    # a checkpoint holds the virtual tokens (and the MLP) and nothing of the base
    assert all(k.startswith("lorakit_prompt.") for k in load_file(checkpoint / "trainable.safetensors"))
    resumed = tmp_path / "resumed"
    run_training(_cfg(learnable_model_dir, data, resumed, kind, max_steps=6, save_every=3, schedule="cosine",
                      resume=str(checkpoint)))
    a, b = load_file(full / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys() == {"prompt_embeddings"}
    assert torch.equal(a["prompt_embeddings"], b["prompt_embeddings"])
    assert _losses(full)[3:] == _losses(resumed)[-3:]


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_packing_resolves_off_with_a_reason_and_explicit_packing_is_refused(tmp_path, method):
    data = write_dataset(tmp_path / "data", n_train=64, max_len=12, min_len=6)
    samples, _ = load_samples(data / "train.jsonl")
    assert choose_packing(samples, 128).value is True  # short samples: a LoRA run would pack them
    cfg, choices = resolve_data_defaults(TrainConfig(method=method, max_seq_len=128), samples)
    assert cfg.packing is False
    [choice] = [c for c in choices if c.setting == "packing"]
    assert choice.value is False and "virtual tokens" in choice.why
    with pytest.raises(LorakitError, match=r"^--packing with --method .*drop --packing$"):
        TrainConfig(method=method, packing=True)


def test_prefix_and_prompt_default_to_their_own_learning_rates():
    lora = TrainConfig().lr
    for method in ("prefix", "prompt"):
        assert TrainConfig(method=method).lr == LR["lm"][method] > lora
        assert TrainConfig(method=method, lr=1e-3).lr == 1e-3
    assert TrainConfig(method="prefix").virtual_tokens == TrainConfig(method="prompt").virtual_tokens > 0
    assert TrainConfig().virtual_tokens is None


REFUSED = [
    (["--method", "lora", "--virtual-tokens", "8"], "--virtual-tokens applies to --method prefix or prompt"),
    (["--method", "prompt", "--prefix-projection"], "--prefix-projection applies to --method prefix"),
    (["--method", "prefix", "--prompt-init", "text"], "--prompt-init applies to --method prompt"),
    (["--method", "prefix", "--encoder-hidden-size", "8"], "add --prefix-projection"),
    (["--method", "prompt", "--prompt-init", "text"], "needs --prompt-init-text"),
    (["--method", "prompt", "--prompt-init-text", "hi"], "add --prompt-init text"),
    (["--method", "prompt", "--prompt-init", "words"], "--prompt-init 'words'"),
    (["--method", "prompt", "--packing"], "packed samples would share them"),
    (["--method", "prefix", "--grad-checkpoint"], "--grad-checkpoint with --method prefix"),
    (["--method", "prefix", "--targets", "attention"], "--targets is a LoRA setting"),
    (["--method", "prompt", "--virtual-tokens", "0"], "--virtual-tokens must be positive"),
]


@pytest.mark.parametrize("flags,message", REFUSED, ids=[" ".join(f) for f, _ in REFUSED])
def test_settings_that_make_no_sense_are_refused_in_one_line_and_nothing_is_written(tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert main(["train", "--data", str(tmp_path), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_prompt_tuning_with_gradient_checkpointing_trains_as_without(learnable_model_dir, tmp_path):
    """Checkpointing recomputes the layers, it does not change them: the same losses either way."""
    data = write_dataset(tmp_path / "data", n_train=8, n_valid=2)
    plain, checkpointed = tmp_path / "plain", tmp_path / "checkpointed"
    run_training(_cfg(learnable_model_dir, data, plain, "prompt", lean_memory=False))
    run_training(_cfg(learnable_model_dir, data, checkpointed, "prompt", grad_checkpoint=True))
    assert _losses(plain) == pytest.approx(_losses(checkpointed), abs=1e-5)


def test_the_speed_plan_turns_gradient_checkpointing_off_for_prefix_tuning_with_a_note():
    cpu = torch.device("cpu")
    plan = resolve_speed(model_type="llama", method="prefix", device=cpu, grad_checkpoint=True)
    assert plan.grad_checkpoint is False and any(n.startswith("grad_checkpoint off: prefix") for n in plan.notes)
    prompt = resolve_speed(model_type="llama", method="prompt", device=cpu, grad_checkpoint=True)
    assert prompt.grad_checkpoint is True and not any(n.startswith("grad_checkpoint") for n in prompt.notes)


@pytest.mark.parametrize("kind", ["prefix", "prompt"])
def test_bf16_training_holds_the_frozen_base_in_bf16_and_saves_an_fp32_adapter(learnable_model_dir, tmp_path, kind):
    """Every base projection is frozen and plain, so the plan stores them in bf16 as it does under LoRA;
    the virtual tokens train and are saved in fp32, and the run's loss stays finite."""
    data = write_dataset(tmp_path / "data", n_train=8, n_valid=2)
    out = tmp_path / "run"
    summary = run_training(_cfg(learnable_model_dir, data, out, kind, precision="bf16"))
    assert summary["precision"] == "bf16" and summary["speed_plan"]["frozen_bf16"] is True
    assert all(math.isfinite(x) for x in _losses(out))
    saved = load_file(out / "adapter_model.safetensors")["prompt_embeddings"]
    assert saved.dtype == torch.float32 and bool(torch.isfinite(saved).all())
