"""`lorakit merge`: the merged directory loads with transformers alone and equals the adapted model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lorakit.adapters import LoraConfig, add_adapter, save_adapter
from lorakit.errors import AdapterLoadError, LorakitError
from lorakit.eval.cli import register
from lorakit.merge import merge_to_dir
from lorakit.models import load_model
from tests.adapters.helpers import randomize_adapter

IDS = [[5, 900, 17, 31000, 42, 7, 1234, 99], [8, 8, 15000, 3, 49000, 11, 2, 640]]
VARIANTS = {
    "lora": LoraConfig(r=4, alpha=8, target_modules="all-linear"),
    "rslora": LoraConfig(r=4, alpha=8, target_modules="all-linear", use_rslora=True),
    "dora": LoraConfig(r=4, alpha=8, target_modules="all-linear", use_dora=True),
    "embedding": LoraConfig(r=4, alpha=8, target_modules=["embed_tokens", "q_proj", "down_proj"]),
}
LOAD_WITH_TRANSFORMERS_ONLY = """
import json, sys, torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
dirs, ids = json.loads(sys.argv[1]), torch.tensor(json.loads(sys.argv[2]))
out = {}
for name, path in dirs.items():
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        out[name] = model(input_ids=ids).logits.float().contiguous()
assert not any(m == "lorakit" or m.startswith("lorakit.") for m in sys.modules), "lorakit was imported"
save_file(out, sys.argv[3])
"""


def make_adapter(base: Path, config: LoraConfig, out: Path, seed: int = 0) -> torch.Tensor:
    """Save a random (non-zero) adapter for `base`; returns the adapted model's logits on IDS."""
    model, _ = load_model(base, with_tokenizer=False)
    torch.manual_seed(seed)
    add_adapter(model, config)
    randomize_adapter(model, seed=seed)
    save_adapter(model, out)
    with torch.no_grad():
        return model(input_ids=torch.tensor(IDS)).logits


def test_merged_model_equals_adapted_model_without_lorakit(tiny_model_dir, tmp_path):
    expected, merged = {}, {}
    for name, config in VARIANTS.items():
        expected[name] = make_adapter(tiny_model_dir, config, tmp_path / f"adapter-{name}")
        merged[name] = str(merge_to_dir(tiny_model_dir, tmp_path / f"adapter-{name}", tmp_path / f"merged-{name}"))
    logits_file = tmp_path / "logits.safetensors"
    subprocess.run([sys.executable, "-c", LOAD_WITH_TRANSFORMERS_ONLY, json.dumps(merged), json.dumps(IDS),
                    str(logits_file)], check=True, cwd=tmp_path)
    got = load_file(logits_file)
    base_logits = load_model(tiny_model_dir, with_tokenizer=False)[0](input_ids=torch.tensor(IDS)).logits.detach()
    for name in VARIANTS:
        assert not torch.allclose(expected[name], base_logits, atol=1e-3), f"{name}: adapter changed nothing"
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0)
    # the adapted embedding was untied from the head, and the saved config says so
    assert json.loads((Path(merged["embedding"]) / "config.json").read_text())["tie_word_embeddings"] is False
    assert json.loads((Path(merged["lora"]) / "config.json").read_text())["tie_word_embeddings"] is True
    for path in merged.values():
        files = {f.name for f in Path(path).iterdir()}
        assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= files
        assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directories were left behind"


def test_dtype_is_cast_at_save(tiny_model_dir, tmp_path):
    make_adapter(tiny_model_dir, VARIANTS["lora"], tmp_path / "adapter")
    out = merge_to_dir(tiny_model_dir, tmp_path / "adapter", tmp_path / "bf16", "bfloat16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(out / "model.safetensors", "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.bfloat16}
    with pytest.raises(LorakitError, match="--dtype"):
        merge_to_dir(tiny_model_dir, tmp_path / "adapter", tmp_path / "x", "int8")


def test_existing_output_needs_force_and_force_replaces_only_a_merged_model(tiny_model_dir, tmp_path):
    make_adapter(tiny_model_dir, VARIANTS["lora"], tmp_path / "adapter")
    out = tmp_path / "merged"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(LorakitError, match="--force"):
        merge_to_dir(tiny_model_dir, tmp_path / "adapter", out)
    with pytest.raises(LorakitError, match="stale.txt.*lorakit did not write"):
        merge_to_dir(tiny_model_dir, tmp_path / "adapter", out, force=True)
    assert (out / "stale.txt").read_text() == "old"
    (out / "stale.txt").unlink()
    merge_to_dir(tiny_model_dir, tmp_path / "adapter", out)  # an empty folder may be written into
    (out / "stale.txt").write_text("old")  # a merged model with a stray file: --force replaces it whole
    merge_to_dir(tiny_model_dir, tmp_path / "adapter", out, force=True)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    with pytest.raises(LorakitError, match="adapter being merged"):
        merge_to_dir(tiny_model_dir, tmp_path / "adapter", tmp_path, force=True)


def test_adapter_for_another_base_is_refused_before_writing(tiny_model_dir, tmp_path):
    import transformers as tf

    other = tmp_path / "other-base"
    cfg = tf.LlamaConfig(vocab_size=49152, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    tf.LlamaForCausalLM(cfg).save_pretrained(other)
    make_adapter(other, VARIANTS["lora"], tmp_path / "adapter")
    with pytest.raises(AdapterLoadError, match="different base model"):
        merge_to_dir(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_merge(tiny_model_dir, tmp_path, capsys):
    import argparse

    make_adapter(tiny_model_dir, VARIANTS["dora"], tmp_path / "adapter")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["merge", "--model", str(tiny_model_dir), "--adapter", str(tmp_path / "adapter"),
                              "--out", str(tmp_path / "m"), "--dtype", "float16"])
    assert args.func(args) == 0
    assert "merged model written" in capsys.readouterr().out
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "float16"
    args = parser.parse_args(["merge", "--adapter", str(tmp_path / "nothing"), "--out", str(tmp_path / "n")])
    with pytest.raises(AdapterLoadError, match="adapter_config.json"):
        args.func(args)
