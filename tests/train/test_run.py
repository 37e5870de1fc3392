"""`lorakit train` end to end on a tiny llama: the loss falls, runs repeat, resume, kill, bad input, checkpoints."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorakit.errors import LorakitError
from lorakit.runtime.precision import resolve_precision
from lorakit.train.checkpoint import latest_checkpoint
from lorakit.train.config import TrainConfig
from lorakit.train.progress import read_metrics
from lorakit.train.run import run_training
from tests.train.conftest import write_dataset

def _cfg(model_dir, data, out, **kw) -> TrainConfig:
    # fp32 and padded batches with loss on every token unless a test says otherwise: the properties
    # here must hold on every machine kind, not only where `auto` picks fp32 (tests/train/test_defaults.py
    # checks what the auto defaults choose)
    base = dict(model=str(model_dir), data=str(data), out=str(out), batch_size=4, max_steps=8, lr=5e-3,
                warmup=2, seed=0, progress=False, threads=1, precision="fp32", packing=False, mask_prompt=False)
    base.update(kw)
    return TrainConfig(**base)


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


@pytest.fixture(scope="module")
def learnable_model_dir(tmp_path_factory) -> Path:
    """The tiny llama of `tiny_model_dir` with weights of std 0.3 instead of 0.02.

    With the default init the tied head is frozen under LoRA and every logit stays within about
    +-0.6, so no adapter can move the loss far from ln(vocab); larger weights give the adapters
    logits they can move.
    """
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


@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_loss_on_one_repeated_batch_falls_far(learnable_model_dir, tmp_path, method):
    """Overfitting one batch: with four samples and --batch-size 4 every step sees the same batch, so
    any working optimizer drives its loss down. Two bounds with wide margins, not a recorded curve:
    after 30 steps the loss is under half of the first step's, and under ln(298) = 5.70, the loss of
    a model that has only learnt which of the 298 token ids occur (uniform over them), so the run
    has learnt the samples themselves (measured: lora 12.3 -> 3.9, full 12.3 -> 0.09)."""
    data = write_dataset(tmp_path / "data", n_train=4, n_valid=2)  # ids drawn from 3..300
    out = tmp_path / "run"
    run_training(_cfg(learnable_model_dir, data, out, method=method, max_steps=30, lr=1e-2, warmup=0,
                      schedule="constant"))
    losses = _losses(out)
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    end = sum(losses[-3:]) / 3  # the last steps' mean: no single lucky step
    assert end < 0.5 * losses[0], losses
    assert end < math.log(298), losses


def test_identical_runs_give_identical_curves_and_another_seed_does_not(tiny_model_dir, dataset, tmp_path):
    """A run is a pure function of its config: the same settings (packing, completion-only loss,
    dropout on the LoRA path) give bitwise the same losses and adapter; a different --seed gives
    a different curve, so the seed is really what fixes them."""
    common = dict(max_steps=8, packing=True, mask_prompt=True, max_seq_len=128, dropout=0.1)
    for name, seed in (("a", 0), ("b", 0), ("other", 1)):
        run_training(_cfg(tiny_model_dir, dataset, tmp_path / name, seed=seed, **common))
    first, second = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(first) == 8 and first == second
    a, b = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "other") != first


def test_outputs_are_written(tiny_model_dir, dataset, tmp_path):
    out = tmp_path / "run"
    run_training(_cfg(tiny_model_dir, dataset, out, eval_every=4))
    for name in ("adapter_config.json", "adapter_model.safetensors", "train_config.yaml", "metrics.jsonl",
                 "loss.png", "summary.json", "best/adapter_model.safetensors"):
        assert (out / name).is_file(), name
    evals = [r for r in read_metrics(out / "metrics.jsonl") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [4, 8]
    row = read_metrics(out / "metrics.jsonl")[0]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "rss_mb"} <= set(row)


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tiny_model_dir, dataset, tmp_path):
    full = tmp_path / "full"
    run_training(_cfg(tiny_model_dir, dataset, full, save_every=4, keep_checkpoints=5, dropout=0.1))
    resumed = tmp_path / "resumed"
    run_training(_cfg(tiny_model_dir, dataset, resumed, resume=str(full / "checkpoints" / "step-000004"), dropout=0.1))
    a = load_file(full / "adapter_model.safetensors")
    b = load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _losses(full)[4:] == _losses(resumed)[-4:]


@pytest.mark.slow  # resume == uninterrupted is checked in-process above; this adds a real SIGKILL (3 processes)
def test_resume_after_a_kill(tiny_model_dir, tmp_path):
    """SIGKILL mid-run, `--resume` (auto), and the result equals a run that was never killed."""
    data = write_dataset(tmp_path / "data", n_train=400, max_len=120)
    args = ["--model", str(tiny_model_dir), "--data", str(data), "--batch-size", "4", "--max-steps", "30",
            "--save-every", "3", "--lr", "5e-3", "--no-progress", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "lorakit", "train", *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while latest_checkpoint(killed / "checkpoints") is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = int(latest_checkpoint(killed / "checkpoints").name.split("-")[1])
    assert step_at_kill < 30, "the run finished before it could be killed; make it longer"
    subprocess.run([sys.executable, "-m", "lorakit", "train", *args, "--out", str(killed), "--resume"], env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    clean = tmp_path / "clean"
    subprocess.run([sys.executable, "-m", "lorakit", "train", *args, "--out", str(clean)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a = load_file(killed / "adapter_model.safetensors")
    b = load_file(clean / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_metrics(killed / "metrics.jsonl") if "loss" in r] == list(range(1, 31))


def test_resume_with_other_settings_is_refused(tiny_model_dir, dataset, tmp_path):
    out = tmp_path / "run"
    run_training(_cfg(tiny_model_dir, dataset, out, max_steps=4, save_every=2))
    with pytest.raises(LorakitError, match=r"was trained with rank=16, this run has rank=8"):
        run_training(_cfg(tiny_model_dir, dataset, out, max_steps=6, rank=8, resume="auto"))
    with pytest.raises(LorakitError, match=r"was trained with precision='fp32', this run has precision='bf16'"):
        run_training(_cfg(tiny_model_dir, dataset, out, max_steps=6, precision="bf16", resume="auto"))


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tiny_model_dir, dataset, tmp_path, monkeypatch):
    import lorakit.train.checkpoint as ckpt

    out = tmp_path / "run"
    real_save = ckpt.save_file
    calls = {"n": 0}

    def failing_save(tensors, path, metadata=None):
        if "step-000004" in str(path) and Path(path).name == "optimizer.safetensors":
            raise OSError("disk full (simulated)")
        calls["n"] += 1
        return real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        run_training(_cfg(tiny_model_dir, dataset, out, max_steps=6, save_every=2))
    monkeypatch.setattr(ckpt, "save_file", real_save)
    latest = latest_checkpoint(out / "checkpoints")
    assert latest is not None and latest.name == "step-000002"
    assert not list((out / "checkpoints").glob(".*tmp*")), "a half-written checkpoint was left behind"
    summary = run_training(_cfg(tiny_model_dir, dataset, out, max_steps=6, save_every=2, resume="auto"))
    assert summary["steps"] == 6


def test_nan_loss_stops_and_names_the_step(tiny_model_dir, dataset, tmp_path):
    with pytest.raises(LorakitError, match=r"loss became (nan|inf) at step \d+"):
        run_training(_cfg(tiny_model_dir, dataset, tmp_path / "run", lr=1e6, max_grad_norm=0, max_steps=30,
                          method="full", warmup=0))


@pytest.mark.parametrize("method", ["full", "head", "dora"])
def test_baseline_methods_train_and_save(tiny_model_dir, dataset, tmp_path, method):
    out = tmp_path / method
    summary = run_training(_cfg(tiny_model_dir, dataset, out, method=method, max_steps=3))
    assert summary["steps"] == 3
    if method == "dora":
        assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True
    else:
        assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def test_qlora_trains_and_its_adapter_loads_on_the_fp32_base(tiny_model_dir, dataset, tmp_path):
    from lorakit.adapters import load_adapter
    from lorakit.models import load_model

    out = tmp_path / "qlora"
    summary = run_training(_cfg(tiny_model_dir, dataset, out, method="qlora", max_steps=3))
    assert summary["steps"] == 3
    saved = load_file(out / "adapter_model.safetensors")
    assert saved and any(t.abs().sum() > 0 for name, t in saved.items() if name.endswith("lora_B.weight"))
    model, _ = load_model(tiny_model_dir, with_tokenizer=False)
    load_adapter(model, out)
    assert torch.isfinite(model(torch.tensor([[5, 6, 7]])).logits).all()


def test_bad_dataset_inputs(tiny_model_dir, tmp_path):
    with pytest.raises(LorakitError, match="dataset directory not found"):
        run_training(_cfg(tiny_model_dir, tmp_path / "nope", tmp_path / "o1"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.jsonl").write_text("")
    with pytest.raises(LorakitError, match="train.jsonl: no usable samples"):
        run_training(_cfg(tiny_model_dir, empty, tmp_path / "o2"))
    long = write_dataset(tmp_path / "long", max_len=60)
    with pytest.raises(LorakitError, match=r"tokens > --max-seq-len 16 \(--strict\)"):
        run_training(_cfg(tiny_model_dir, long, tmp_path / "o3", max_seq_len=16, strict=True))
    summary = run_training(_cfg(tiny_model_dir, long, tmp_path / "o4", max_seq_len=16, max_steps=1))
    assert summary["truncated"] > 0


def test_cli_flags_override_yaml_which_overrides_defaults(tiny_model_dir, dataset, tmp_path):
    from lorakit.cli import main

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"model: {tiny_model_dir}\ndata: {dataset}\nrank: 4\nlr: 0.001\nmax-steps: 2\nprogress: false\n")
    out = tmp_path / "run"
    assert main(["train", "-c", str(cfg_file), "--out", str(out), "--lr", "0.002", "--threads", "1"]) == 0
    import yaml

    resolved = yaml.safe_load((out / "train_config.yaml").read_text())
    assert resolved["rank"] == 4 and resolved["lr"] == 0.002 and resolved["max_steps"] == 2
    assert resolved["alpha"] == 8.0 and resolved["schedule"] == "cosine"
    # the resolved speed plan is saved beside the settings, and the run summary says the same
    assert resolved["speed_plan"]["fuse"] is True
    assert resolved["speed_plan"]["precision"] == resolve_precision("auto", torch.device("cpu"), int8=True)  # the default
    assert json.loads((out / "summary.json").read_text())["speed_plan"] == resolved["speed_plan"]
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4


def test_compile_wraps_every_decoder_layer_in_place_and_undoes(tiny_model_dir):
    """--compile compiles each decoder layer in place (no forward pass here, so nothing is compiled
    yet and this is cheap): every layer is wrapped, every parameter keeps its name, undo unwraps."""
    from lorakit.models import load_model
    from lorakit.plan.speed import resolve_speed
    from lorakit.families import decoder_layers
    from lorakit.train.speed import apply_speed_plan

    model, _ = load_model(tiny_model_dir, with_tokenizer=False)
    names = [name for name, _ in model.named_parameters()]
    undo = apply_speed_plan(model, resolve_speed(model_type="llama", method="lora", device=torch.device("cpu"),
                                                 compile=True))
    layers = decoder_layers(model)
    assert len(layers) == model.config.num_hidden_layers
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert [name for name, _ in model.named_parameters()] == names
    undo()
    assert all(layer._compiled_call_impl is None for layer in layers)


# The same property (compiled == uncompiled training) runs in the everyday suite under bf16, the fast
# path (tests/train/test_precision.py); this fp32 twin is the tighter check and, on a fresh machine (empty
# inductor cache), compiles its own kernels: the costliest test of the suite.
@pytest.mark.slow
def test_compiled_layers_train_like_eager_ones(tiny_model_dir, dataset, tmp_path):
    """--compile changes how the layers run, not what they compute: the same curve and adapter, up to
    float reassociation in the fused kernels."""
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    common = dict(max_steps=4, packing=True, mask_prompt=True, max_seq_len=128, eval_every=4)
    run_training(_cfg(tiny_model_dir, dataset, eager, **common))
    run_training(_cfg(tiny_model_dir, dataset, compiled, compile=True, **common))
    # measured: losses within 9e-8 relative, adapter weights within 2.2e-6 (Adam scales tiny gradient
    # differences up where a gradient is near zero)
    torch.testing.assert_close(torch.tensor(_losses(compiled)), torch.tensor(_losses(eager)), rtol=1e-6, atol=0)
    a, b = load_file(eager / "adapter_model.safetensors"), load_file(compiled / "adapter_model.safetensors")
    assert a.keys() == b.keys()  # compiling in place keeps every parameter name
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


def test_attention_implementation_is_switched_or_refused(tiny_model_dir, dataset, tmp_path):
    """--attention eager trains the same curve as the default (sdpa) up to float order; a name
    transformers does not know is refused before any training."""
    common = dict(max_steps=3, max_seq_len=64)
    run_training(_cfg(tiny_model_dir, dataset, tmp_path / "sdpa", **common))
    run_training(_cfg(tiny_model_dir, dataset, tmp_path / "eager", attention="eager", **common))
    torch.testing.assert_close(torch.tensor(_losses(tmp_path / "eager")), torch.tensor(_losses(tmp_path / "sdpa")),
                               rtol=1e-5, atol=0)
    with pytest.raises(LorakitError, match="--attention"):
        run_training(_cfg(tiny_model_dir, dataset, tmp_path / "bad", attention="no-such-attention", **common))


@pytest.mark.parametrize("setting", [
    {"lr": float("nan")}, {"lr": -1e-4}, {"lr": 0.0}, {"dropout": 1.0}, {"dropout": -0.1},
    {"epochs": float("inf")}, {"warmup": -1}, {"weight_decay": float("nan")}, {"max_grad_norm": -1.0},
    {"max_steps": 0}, {"alpha": float("nan")}, {"rank": 2.5}, {"batch_size": True}, {"lr": "fast"},
    {"eval_batches": 0}, {"save_every": -5}, {"threads": 0},
])
def test_settings_that_make_no_sense_are_refused_in_one_line(setting):
    """Negative, zero, NaN, infinite or wrongly typed values never start a run that reports success."""
    (name, value), = setting.items()
    with pytest.raises(LorakitError, match=f"--{name.replace('_', '-')} must be") as info:
        TrainConfig(**setting)
    assert "\n" not in str(info.value)


def test_sensible_edge_values_are_accepted():
    cfg = TrainConfig(lr=1, dropout=0.0, warmup=0, weight_decay=0.0, max_grad_norm=0.0, eval_every=0,
                      save_every=0, keep_checkpoints=0, max_steps=None, threads=None, alpha=32)
    assert cfg.alpha == 32 and cfg.lr == 1


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    """PyYAML reads `lr: 1e-4` as the string '1e-4'; the config takes it as the number."""
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-4\nweight_decay: 1e-2\n")
    cfg = TrainConfig.resolve(str(path), {})
    assert cfg.lr == 1e-4 and cfg.weight_decay == 1e-2
    path.write_text("lr: fast\n")
    with pytest.raises(LorakitError, match="--lr must be a number"):
        TrainConfig.resolve(str(path), {})
