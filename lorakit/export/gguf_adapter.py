"""A PEFT LoRA adapter -> a llama.cpp adapter GGUF (`general.type = adapter`, `adapter.type = lora`).

What llama.cpp does with the file (src/llama-adapter.cpp, llama-graph.cpp): for each base tensor
``W`` named ``N`` it looks up ``N.lora_a`` / ``N.lora_b`` and adds ``scale * b(a(x))`` with
``scale = adapter.lora.alpha / r``, `r` read per tensor from ``lora_b``'s first dimension. So:

* linear: ``lora_a`` is PEFT's A as it is ([r, in] in PyTorch order, ne = [in, r]) and ``lora_b``
  is B ([out, r], ne = [r, out]) with its rows in the base tensor's GGUF order (q/k reordered for
  the llama family, `GgufTarget.rows_to_gguf`);
* the embedding: llama.cpp gathers rows of ``lora_a`` per token, so ``lora_a`` is A transposed
  ([vocab, r], ne = [r, vocab]) and ``lora_b`` is B ([dim, r]);
* the scale: lorakit's per-module scaling s (alpha/r, or alpha/sqrt(r) with rsLoRA) equals
  llama.cpp's alpha'/r when alpha' = s * r. Where that product is one number for every module it
  is written as ``adapter.lora.alpha`` and the factors go out untouched; where it differs (rsLoRA
  with a rank pattern, an alpha pattern) one alpha' is written and each module's ``lora_b`` carries
  the rest of its own scale, which gives llama.cpp the same product.

What such a file cannot hold is refused before anything is written: DoRA's magnitudes and
`modules_to_save` (whole replaced tensors); both export merged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lorakit.adapters.config import pattern_value, peft_scaling
from lorakit.errors import LorakitError
from lorakit.export.encode import ADAPTER_OUTTYPES, encode
from lorakit.export.names import GgufTarget

PREFIX = "base_model.model."  # PEFT's key prefix (lorakit.adapters.io writes the same)
_FACTORS = {"lora_A.weight": ("A", False), "lora_B.weight": ("B", False),
            "lora_embedding_A": ("A", True), "lora_embedding_B": ("B", True)}
MERGED_HINT = "export it merged instead: lorakit export --merged --format gguf --adapter DIR --out FILE.gguf"


@dataclass
class ModuleFactors:
    """One adapted module: A [r, in] and B [out, r] as PEFT stores them (the embedding's A is
    [r, vocab], B [dim, r]), its scaling, and whether it is the embedding."""

    module: str
    A: torch.Tensor
    B: torch.Tensor
    scaling: float
    embedding: bool

    @property
    def rank(self) -> int:
        return self.A.shape[0]


def config_refusals(config: dict, cfg_file: Path) -> dict[str, str]:
    """What in an adapter's config a llama.cpp adapter GGUF cannot hold: config key -> one-line reason
    (empty when nothing). `lorakit export --check llama.cpp` reports all of them."""
    out = {}
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        out["peft_type"] = (f"{cfg_file}: peft_type {config.get('peft_type')!r} is not LoRA; a GGUF adapter holds "
                            f"LoRA factors only")
    if config.get("use_dora"):
        out["use_dora"] = (f"{cfg_file}: a DoRA adapter's magnitudes cannot be held by a llama.cpp adapter GGUF; "
                           f"{MERGED_HINT}")
    if config.get("modules_to_save"):
        out["modules_to_save"] = (f"{cfg_file}: modules_to_save {config['modules_to_save']} are whole trained "
                                  f"tensors, which a llama.cpp adapter GGUF cannot hold; {MERGED_HINT}")
    return out


def read_factors(adapter_dir: Path) -> tuple[list[ModuleFactors], dict]:
    """The LoRA factors of a PEFT adapter folder, per module, and its config dict.

    Refuses (one line, naming the file) what a GGUF adapter cannot hold."""
    from lorakit.adapters.io import read_adapter_weights, read_config_json

    cfg_file = adapter_dir / "adapter_config.json"
    config = read_config_json(adapter_dir)
    refused = config_refusals(config, cfg_file)
    if refused:
        raise LorakitError(next(iter(refused.values())))
    weights = read_adapter_weights(adapter_dir)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    embedding: dict[str, bool] = {}
    for key, tensor in weights.items():
        if not key.startswith(PREFIX):
            raise LorakitError(f"{adapter_dir / 'adapter_model.safetensors'}: tensor {key!r} is not a PEFT LoRA key "
                               f"({PREFIX}<module>.lora_A.weight); re-save the adapter")
        module, _, param = key[len(PREFIX):].rpartition(".lora_")
        if not module and "base_layer" in key[len(PREFIX):].split(".")[:-1]:
            # PEFT saves the untouched base table of an adapted embedding or head (save_embedding_layers):
            # the base GGUF holds it already
            continue
        kind = _FACTORS.get("lora_" + param)
        if kind is None:
            raise LorakitError(f"{adapter_dir / 'adapter_model.safetensors'}: tensor {key!r} is not a LoRA factor "
                               f"a llama.cpp adapter can hold; {MERGED_HINT}")
        parts.setdefault(module, {})[kind[0]] = tensor.float()
        embedding[module] = kind[1]
    r, rank_pattern = int(config.get("r", 8)), config.get("rank_pattern") or {}
    out = []
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise LorakitError(f"{adapter_dir / 'adapter_model.safetensors'}: module {module!r} lacks lora_"
                               f"{'B' if 'A' in ab else 'A'}; re-save the adapter")
        rank, want = ab["A"].shape[0], int(pattern_value(rank_pattern, module, r))
        if rank != want:
            raise LorakitError(f"{cfg_file}: module {module!r} has rank {rank} in the weights but {want} in the "
                               "config; re-save the adapter")
        out.append(ModuleFactors(module, ab["A"], ab["B"], peft_scaling(config, module, rank), embedding[module]))
    if not out:
        raise LorakitError(f"{adapter_dir / 'adapter_model.safetensors'}: holds no LoRA factors")
    return out, config


def gguf_alpha(factors: list[ModuleFactors]) -> float:
    """The one `adapter.lora.alpha` to write: s * r of the first module (see the module docstring)."""
    return factors[0].scaling * factors[0].rank


def module_refusal(f: ModuleFactors, target: GgufTarget, tied: bool, adapter_dir: Path) -> str | None:
    """Why one adapted module cannot go into a llama.cpp adapter GGUF for this base (None: it can)."""
    name = target.name(f"{f.module}.weight")
    if name is None:
        return f"{adapter_dir}: module {f.module!r} has no tensor in llama.cpp's {target.arch} layout; {MERGED_HINT}"
    if tied and name == target.name("lm_head.weight"):
        return (f"{adapter_dir}: module {f.module!r} is the output head, which this base ties to the "
                f"embedding (the GGUF has no separate output tensor); {MERGED_HINT}")
    if tied and f.embedding:  # llama.cpp would also apply it to the tied output head (and fails there)
        return (f"{adapter_dir}: an adapter on the embedding of a base that ties it to the output "
                f"head is not applied by llama.cpp as by PEFT; {MERGED_HINT}")
    return None


def adapter_tensors(factors: list[ModuleFactors], target: GgufTarget, tied: bool,
                    adapter_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """GGUF base tensor name -> (lora_a, lora_b) in PyTorch order, as the file holds them."""
    alpha = gguf_alpha(factors)
    out = {}
    for f in factors:
        refused = module_refusal(f, target, tied, adapter_dir)
        if refused:
            raise LorakitError(refused)
        param = f"{f.module}.weight"
        name = target.name(param)
        # this module's own scale over the one llama.cpp applies (alpha / r); exactly 1 in the common case
        rest = f.scaling * f.rank / alpha
        B = f.B if rest == 1.0 else f.B * rest
        if f.embedding:
            out[name] = (f.A.T.contiguous(), B)
        else:
            out[name] = (f.A, target.rows_to_gguf(param, B))
    return out


def check_outtype(outtype: str) -> None:
    """A one-line error for an --outtype an adapter GGUF is not written in."""
    if outtype not in ADAPTER_OUTTYPES:
        raise LorakitError(f"--outtype {outtype!r} is not offered for an adapter GGUF; choose one of "
                           f"{', '.join(ADAPTER_OUTTYPES)}")


def write_adapter_gguf(adapter_dir: str | os.PathLike, out: str | os.PathLike, config, *,
                       outtype: str = "f32", name: str | None = None) -> Path:
    """Write the adapter in `adapter_dir` (for the base whose transformers `config` is given) as a
    llama.cpp adapter GGUF at `out`, atomically. Returns `out`."""
    import gguf

    from lorakit.export.names import gguf_target
    from lorakit.export.write import atomic_gguf

    check_outtype(outtype)
    adapter_dir = Path(adapter_dir)
    factors, peft_config = read_factors(adapter_dir)
    target = gguf_target(config)
    text = getattr(config, "text_config", None) or config
    tensors = adapter_tensors(factors, target, bool(getattr(text, "tie_word_embeddings", False)), adapter_dir)
    with atomic_gguf(Path(out), target.arch) as writer:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(name or adapter_dir.resolve().name)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, gguf_alpha(factors))
        base = peft_config.get("base_model_name_or_path")
        if base:
            writer.add_base_model_count(1)
            writer.add_base_model_name(0, str(base))
        for base_name, (a, b) in tensors.items():
            for suffix, tensor in ((".lora_a", a), (".lora_b", b)):
                data, kind = encode(tensor, outtype)
                writer.add_tensor(base_name + suffix, data, raw_dtype=kind)
    return Path(out)
