"""Hugging Face parameter names and layouts -> the GGUF tensors llama.cpp reads.

The names come from the `gguf` package's tensor map for the architecture the family registry
gives (`Family.gguf_arch`); the one layout change is llama.cpp's rotary row order for q/k in the
llama family (`Family.gguf_permute_qk`), which its converter applies to the base weights, so
anything added to those weights (a merged delta, an adapter's `lora_B`) is reordered the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorakit.errors import LorakitError
from lorakit.families import Family, family_of


@dataclass(frozen=True)
class GgufTarget:
    """Where a model's tensors go in GGUF: its llama.cpp architecture and the name map."""

    family: Family
    arch: str  # llama.cpp's architecture name, e.g. "llama", "qwen2", "gemma3"
    n_head: int
    n_kv_head: int
    tensor_map: object  # gguf.TensorNameMap

    def name(self, hf_param: str) -> str | None:
        """GGUF tensor name of an HF parameter (``model.layers.0.self_attn.q_proj.weight`` ->
        ``blk.0.attn_q.weight``); None for a parameter llama.cpp has no tensor for."""
        return self.tensor_map.get_name(hf_param, try_suffixes=(".weight", ".bias"))

    def kind(self, hf_param: str):
        """The `gguf.MODEL_TENSOR` of an HF parameter (None if unmapped)."""
        found = self.tensor_map.get_type_and_name(hf_param, try_suffixes=(".weight", ".bias"))
        return None if found is None else found[0]

    def rows_to_gguf(self, hf_param: str, rows: torch.Tensor) -> torch.Tensor:
        """Reorder the output rows of a q/k weight (or anything with its rows: a delta, a
        `lora_B` [out, r], a bias) the way llama.cpp's converter does for this family; other
        tensors are returned as they are. rows: [out, ...]."""
        import gguf

        if not self.family.gguf_permute_qk:
            return rows
        kind = self.kind(hf_param)
        heads = {gguf.MODEL_TENSOR.ATTN_Q: self.n_head, gguf.MODEL_TENSOR.ATTN_K: self.n_kv_head}.get(kind)
        if heads is None:
            return rows
        # rotary pairs: HF keeps each head's two halves apart, llama.cpp interleaves them
        return (rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:])
                .swapaxes(1, 2).reshape(rows.shape))


def gguf_target(config) -> GgufTarget:
    """The GGUF side of a transformers config: architecture, head counts and the tensor map.

    Raises a one-line LorakitError for a model_type the registry has no llama.cpp name for."""
    import gguf

    config = getattr(config, "text_config", None) or config
    family = family_of(getattr(config, "model_type", None))
    arch = family.gguf_arch
    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch is None or arch not in by_name:
        raise LorakitError(f"GGUF export: lorakit knows no llama.cpp architecture for model_type "
                           f"'{config.model_type}'; export a merged Hugging Face folder with `lorakit merge` instead")
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    tmap = gguf.get_tensor_name_map(by_name[arch], config.num_hidden_layers)
    return GgufTarget(family, arch, n_head, n_kv, tmap)
