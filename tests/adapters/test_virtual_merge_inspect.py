"""`lorakit merge` refuses prefix/prompt adapters (nothing written); `lorakit inspect` describes them
(`--adapter`) and counts what `--method prefix|prompt` would train on a model."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from lorakit.adapters import (
    PrefixTuningConfig,
    PromptTuningConfig,
    add_prefix_tuning,
    add_prompt_tuning,
    save_virtual_adapter,
)
from lorakit.cli import main
from lorakit.errors import LorakitError
from lorakit.merge import merge_to_dir
from tests.conftest import tiny_model

N = 3
KINDS = ("prefix", "prefix-projection", "prompt")


def _attach(model, kind: str):
    if kind == "prompt":
        return add_prompt_tuning(model, PromptTuningConfig(num_virtual_tokens=N))
    return add_prefix_tuning(model, PrefixTuningConfig(num_virtual_tokens=N, prefix_projection=kind.endswith("projection"),
                                                       encoder_hidden_size=10 if kind.endswith("projection") else None))


@pytest.fixture
def saved(tmp_path):
    """kind -> (base model dir, adapter dir) on a tiny llama (4 heads, 2 KV heads, 2 layers)."""
    base = tmp_path / "base"
    tiny_model("llama").save_pretrained(base)
    folders = {}
    for kind in KINDS:
        model = tiny_model("llama")
        _attach(model, kind)
        folders[kind] = save_virtual_adapter(model, tmp_path / kind, base_model_name_or_path=str(base))
    return base, folders


@pytest.mark.parametrize("kind", KINDS)
def test_merge_refuses_a_virtual_token_adapter_in_one_line_and_writes_nothing(saved, tmp_path, capsys, kind):
    base, folders = saved
    out = tmp_path / "merged"
    with pytest.raises(LorakitError, match=r"cannot be merged: it changes no weight.*nothing was written"):
        merge_to_dir(str(base), folders[kind], out)
    assert main(["merge", "--model", str(base), "--adapter", str(folders[kind]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PeftModel.from_pretrained" in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_inspect_adapter_shows_its_virtual_tokens_layers_and_parameter_count(saved, capsys, kind):
    _, folders = saved
    assert main(["inspect", "--adapter", str(folders[kind])]) == 0
    out = capsys.readouterr().out
    tensor = load_file(folders[kind] / "adapter_model.safetensors")["prompt_embeddings"]
    assert f"parameters: {tensor.numel():,} " in out
    assert f"{N} virtual tokens" in out and "merge: not possible" in out
    if kind.startswith("prefix"):  # 2 layers of 2 KV heads x 8 (hidden 32 / 4 heads)
        assert "each of 2 layers (2 KV heads x 8)" in out
        assert ("output only" in out) == kind.endswith("projection")
    else:
        assert "width 32 before the input" in out


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_inspect_method_counts_what_prefix_or_prompt_tuning_would_train(tmp_path, capsys, method):
    """Prefix tuning trains N key/value pairs of every layer (KV heads x head dim each), prompt tuning N
    embeddings of the hidden size (Li & Liang 2021; Lester et al. 2021)."""
    model = tiny_model("llama")
    model.save_pretrained(tmp_path)
    cfg = model.config
    assert main(["inspect", "--model", str(tmp_path), "--method", method, "--virtual-tokens", "5"]) == 0
    out = capsys.readouterr().out
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    want = (5 * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim if method == "prefix"
            else 5 * cfg.hidden_size)
    assert f"trainable params: {want:,} " in out
    total = sum(p.numel() for p in model.parameters()) + want
    assert f"all params: {total:,} " in out


@pytest.mark.parametrize("flags,message", [
    (["--method", "lora", "--virtual-tokens", "4"], "--virtual-tokens does not apply to --method lora"),
    (["--method", "prompt", "--dora"], "--dora does not apply to --method prompt"),
    (["--method", "prompt", "--prefix-projection"], "--prefix-projection does not apply"),
    (["--method", "prefix", "--encoder-hidden-size", "8"], "without --prefix-projection"),
])
def test_inspect_refuses_flags_that_do_not_go_with_the_method(tmp_path, capsys, flags, message):
    tiny_model("llama").save_pretrained(tmp_path)
    assert main(["inspect", "--model", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_inspect_adapter_refuses_method_flags_and_a_folder_that_is_no_adapter(saved, tmp_path, capsys):
    base, folders = saved
    assert main(["inspect", "--adapter", str(folders["prompt"]), "--method", "prefix"]) == 2
    assert main(["inspect", "--adapter", str(base)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "drop --method" in err[0] and "adapter_config.json: not found" in err[1], err


def test_inspect_adapter_describes_a_lora_adapter_too(tmp_path, capsys):
    from lorakit.adapters import LoraConfig, add_adapter, save_adapter

    model = tiny_model("llama")
    add_adapter(model, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    save_adapter(model, tmp_path / "lora")
    assert main(["inspect", "--adapter", str(tmp_path / "lora")]) == 0
    out = capsys.readouterr().out
    n = sum(t.numel() for t in load_file(tmp_path / "lora" / "adapter_model.safetensors").values())
    # 2 layers x (q_proj, v_proj) x (A, B)
    assert "LoRA" in out and "r=4 alpha=8" in out and f"parameters: {n:,} in 8 tensors" in out
