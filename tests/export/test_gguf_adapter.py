"""Adapter GGUF export: what llama.cpp will compute from the file equals lorakit's delta.

llama.cpp adds ``(alpha / r) * b(a(x))`` per tensor, r read from ``lora_b``'s first dimension
(src/llama-graph.cpp); the layout tests read the written file back and check that product against
`delta_weight()` (lorakit's one source of merge and export) or PEFT's, in GGUF row order. The
llama.cpp tests (tests/export/test_llama_cpp.py) run the file itself.
"""

from __future__ import annotations

import math

import pytest
import torch

from lorakit.adapters import LoraConfig, adapter_layers, add_adapter, save_adapter
from lorakit.errors import LorakitError
from lorakit.export.gguf_adapter import write_adapter_gguf
from lorakit.export.names import gguf_target
from tests.adapters.helpers import randomize_adapter
from tests.conftest import tiny_model


def _read(path):
    import gguf

    from lorakit.export.encode import decode

    reader = gguf.GGUFReader(str(path))
    meta = {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}
    tensors = {t.name: decode(t.data, t.tensor_type).reshape([int(n) for n in reversed(t.shape.tolist())])
               for t in reader.tensors}
    return meta, tensors


def _llama_cpp_delta(meta, tensors, name: str) -> torch.Tensor:
    """The delta llama.cpp adds to base tensor `name`, as a PyTorch-order weight ([out, in]; the
    embedding [vocab, dim])."""
    a, b = tensors[f"{name}.lora_a"], tensors[f"{name}.lora_b"]
    scale = meta["adapter.lora.alpha"] / b.shape[1]  # b is [out, r]: r = ne[0]
    if name.startswith("token_embd"):
        return scale * (a @ b.T)  # rows of a gathered per token, then b
    return scale * (b @ a)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("rslora", [False, True])
def test_llama_cpp_delta_equals_lorakit_delta_in_gguf_order(arch, rslora, tmp_path):
    model = tiny_model(arch)
    # the embedding only where the base does not tie it to the head (tied: refused, test below)
    embed = [] if model.config.tie_word_embeddings else ["embed_tokens"]
    add_adapter(model, LoraConfig(r=4, alpha=8, use_rslora=rslora,
                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj", *embed]))
    randomize_adapter(model)
    save_adapter(model, tmp_path / "ad")
    out = write_adapter_gguf(tmp_path / "ad", tmp_path / "ad.gguf", model.config)
    meta, tensors = _read(out)
    target = gguf_target(model.config)
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["general.architecture"] == target.arch
    layers = dict(adapter_layers(model))
    assert len(tensors) == 2 * len(layers)
    for module, layer in layers.items():
        name = target.name(f"{module}.weight")
        expected = target.rows_to_gguf(f"{module}.weight", layer.delta_weight("default"))
        got = _llama_cpp_delta(meta, tensors, name)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_q_and_k_rows_are_reordered_only_for_the_llama_family():
    for arch, permuted in (("llama", True), ("qwen2", False), ("gemma3", False)):
        target = gguf_target(tiny_model(arch).config)
        rows = torch.arange(32.0).reshape(32, 1)
        q = target.rows_to_gguf("model.layers.0.self_attn.q_proj.weight", rows)
        v = target.rows_to_gguf("model.layers.0.self_attn.v_proj.weight", rows)
        assert torch.equal(v, rows)
        assert torch.equal(q, rows) is not permuted
        assert sorted(q.flatten().tolist()) == rows.flatten().tolist()  # a reordering, nothing lost


def test_rsLoRA_alpha_gives_llama_cpp_lorakit_scaling(tmp_path):
    model = tiny_model("llama")
    config = LoraConfig(r=4, alpha=8, use_rslora=True, target_modules=["q_proj"])
    add_adapter(model, config)
    save_adapter(model, tmp_path / "ad")
    meta, _ = _read(write_adapter_gguf(tmp_path / "ad", tmp_path / "ad.gguf", model.config))
    assert meta["adapter.lora.alpha"] / 4 == pytest.approx(8 / math.sqrt(4))


def test_rank_and_alpha_patterns_equal_peft_deltas(tmp_path):
    """A PEFT adapter with per-module ranks and alphas: each module's llama.cpp product equals
    PEFT's own delta (one alpha in the file; the rest of each scale carried in lora_b)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    model = tiny_model("llama")
    peft_model = get_peft_model(model, PeftLoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"v_proj": 2, "down_proj": 6}, alpha_pattern={"down_proj": 3}))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn_like(p) * 0.1)
    peft_model.save_pretrained(tmp_path / "ad")
    meta, tensors = _read(write_adapter_gguf(tmp_path / "ad", tmp_path / "ad.gguf", model.config))
    target = gguf_target(model.config)
    ranks = set()
    for module, layer in peft_model.base_model.model.named_modules():
        if hasattr(layer, "get_delta_weight") and "default" in getattr(layer, "lora_A", {}):
            param = f"{module}.weight"
            got = _llama_cpp_delta(meta, tensors, target.name(param))
            torch.testing.assert_close(got, target.rows_to_gguf(param, layer.get_delta_weight("default")),
                                       rtol=1e-5, atol=1e-6)
            ranks.add(tensors[target.name(param) + ".lora_b"].shape[1])
    assert ranks == {2, 4, 6}


@pytest.mark.parametrize("what", ["dora", "modules_to_save", "tied_embedding"])
def test_what_a_gguf_adapter_cannot_hold_is_refused_before_writing(what, tmp_path):
    model = tiny_model("llama")
    extra = {"dora": {"use_dora": True}, "modules_to_save": {"modules_to_save": ["lm_head"]},
             "tied_embedding": {}}[what]
    targets = ["q_proj", "embed_tokens"] if what == "tied_embedding" else ["q_proj"]
    assert model.config.tie_word_embeddings
    add_adapter(model, LoraConfig(r=4, target_modules=targets, **extra))
    save_adapter(model, tmp_path / "ad")
    with pytest.raises(LorakitError) as err:
        write_adapter_gguf(tmp_path / "ad", tmp_path / "ad.gguf", model.config)
    assert "\n" not in str(err.value) and "--merged" in str(err.value)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".ad.gguf*"))


def test_a_family_llama_cpp_has_no_name_for_is_refused_in_one_line():
    with pytest.raises(LorakitError, match="no llama.cpp architecture") as err:
        gguf_target(tiny_model("distilbert").config)
    assert "\n" not in str(err.value)
