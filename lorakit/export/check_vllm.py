"""What vLLM refuses, or applies differently from PEFT, in a PEFT LoRA adapter.

Every rule names the vLLM file it comes from (github.com/vllm-project/vllm): vLLM reads the
adapter's config through `PEFTHelper` (vllm/lora/peft_helper.py: fields it does not declare are
dropped, `validate_legal` refuses the rest), then each tensor name through
`parse_fine_tuned_lora_name` (vllm/lora/utils.py), then checks each module against the ones its
model class can adapt (vllm/lora/lora_model.py, `check_unexpected_modules`).

Not a finding: `layers_to_transform` (vLLM drops the key, but it adapts the modules the tensors
name, which are exactly the transformed layers) and `use_rslora` (PEFTHelper scales by
alpha/sqrt(r) as PEFT does).
"""

from __future__ import annotations

import math

from lorakit.adapters.config import peft_scaling
from lorakit.errors import LorakitError
from lorakit.export.findings import FACTOR_SUFFIXES, AdapterFiles, Finding, split_key
from lorakit.naming import name_matches

RUNTIME = "vllm"
# vllm/config/lora.py: `MaxLoRARanks` (the values --max-lora-rank accepts) and its default
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_LORA_RANK = 16
# vllm/lora/utils.py `is_base_embedding_weights`: copies of the base tables PEFT may save; skipped
_BASE_TABLES = (".embed_tokens.base_layer.weight", ".lm_head.base_layer.weight")


def check_max_lora_rank(value: int | None) -> int:
    """The --max-lora-rank to check against (vLLM's default when None); vLLM accepts only its list."""
    if value is None:
        return DEFAULT_MAX_LORA_RANK
    if value not in MAX_LORA_RANKS:
        raise LorakitError(f"--max-lora-rank {value}: vLLM accepts only {', '.join(map(str, MAX_LORA_RANKS))} "
                           "(vllm/config/lora.py)")
    return value


def _merge_fix(files: AdapterFiles) -> str:
    return f"serve the merged model instead: lorakit merge --adapter {files.dir} --out MERGED_DIR"


def check_vllm(files: AdapterFiles, config=None, max_lora_rank: int | None = None) -> list[Finding]:
    """Findings for serving `files` with vLLM (`config`: the base's transformers config, if known)."""
    cfg, out = files.config, []
    limit = check_max_lora_rank(max_lora_rank)
    fix = _merge_fix(files)
    # vllm/lora/peft_helper.py `_validate_features`: "vLLM does not yet support DoRA."
    if cfg.get("use_dora"):
        out.append(Finding(RUNTIME, "use_dora=true", "vLLM does not serve DoRA adapters (vllm/lora/peft_helper.py "
                           "PEFTHelper._validate_features)", fix + ", or train --method lora"))
    # same place: "vLLM only supports modules_to_save being None." (any module, a head included)
    if cfg.get("modules_to_save"):
        out.append(Finding(RUNTIME, f"modules_to_save={cfg['modules_to_save']}", "vLLM serves no fully trained "
                           "modules beside the LoRA factors (vllm/lora/peft_helper.py "
                           "PEFTHelper._validate_features)", fix))
    # vllm/lora/peft_helper.py `validate_legal`: "Adapter bias is not supported." (older vLLM: unless
    # its LoRAConfig.bias_enabled)
    if (cfg.get("bias") or "none") != "none":
        out.append(Finding(RUNTIME, f"bias={cfg['bias']!r}", "vLLM serves no trained biases "
                           "(vllm/lora/peft_helper.py PEFTHelper.validate_legal)", fix + ", or train with bias='none'"))
    out += _tensor_findings(files, fix)
    # vllm/lora/peft_helper.py `validate_legal`: "LoRA rank {r} is greater than max_lora_rank"; it
    # reads the config's r only, but a larger rank from rank_pattern does not fit the max_lora_rank
    # sized buffers `set_lora` copies each module into either (vllm/lora/layers/base_linear.py)
    rank = max([int(cfg.get("r", 8)), *files.ranks().values()])
    if rank > limit:
        fits = [n for n in MAX_LORA_RANKS if n >= rank]
        how = (f"serve with --max-lora-rank {fits[0]}" if fits
               else f"retrain with a rank of at most {MAX_LORA_RANKS[-1]}")
        out.append(Finding(RUNTIME, f"rank {rank}", f"above --max-lora-rank {limit} (vLLM's default is "
                           f"{DEFAULT_MAX_LORA_RANK}; vllm/lora/peft_helper.py PEFTHelper.validate_legal, "
                           "vllm/config/lora.py)", how))
    out += _scale_findings(files, fix)
    out += _module_findings(files, config)
    return out


def _tensor_findings(files: AdapterFiles, fix: str) -> list[Finding]:
    """vllm/lora/utils.py `parse_fine_tuned_lora_name`: a tensor that is not lora_A/lora_B.weight or
    lora_embedding_A/B raises "... is unsupported LoRA weight" (DoRA magnitudes, saved modules and
    bias tensors among them); those already reported above are not repeated."""
    cfg = files.config
    explained = set()
    if cfg.get("use_dora"):
        explained.add("lora_magnitude_vector")
    saved = cfg.get("modules_to_save") or []
    bad = []
    for key in files.shapes:
        module, rest = split_key(key)
        if rest in FACTOR_SUFFIXES or key.endswith(_BASE_TABLES) or rest in explained:
            continue
        if saved and name_matches(module, saved):
            continue
        bad.append(key)
    if not bad:
        return []
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    return [Finding(RUNTIME, f"tensor {bad[0]!r}{more}", "not a LoRA factor; vLLM refuses the adapter "
                    "(\"unsupported LoRA weight\", vllm/lora/utils.py parse_fine_tuned_lora_name)", fix)]


def _scale_findings(files: AdapterFiles, fix: str) -> list[Finding]:
    """vllm/lora/peft_helper.py drops rank_pattern/alpha_pattern (no such fields), and
    vllm/lora/lora_weights.py `LoRALayerWeights.from_config` gives every module the one
    `vllm_lora_scaling_factor` (lora_alpha / r): a module PEFT scales otherwise is served
    with another strength, silently."""
    cfg = files.config
    if not (cfg.get("rank_pattern") or cfg.get("alpha_pattern")):
        return []
    r, alpha = int(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8))
    global_scale = alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)
    off = sorted(m for m, rank in files.ranks().items()
                 if not math.isclose(peft_scaling(cfg, m, rank), global_scale, rel_tol=1e-6))
    if not off:
        return []
    more = f" and {len(off) - 1} more" if len(off) > 1 else ""
    return [Finding(RUNTIME, f"rank_pattern/alpha_pattern (module {off[0]!r}{more})",
                    f"vLLM ignores both and scales every module by lora_alpha/r = {global_scale:g}, not as PEFT "
                    "does (vllm/lora/peft_helper.py, vllm/lora/lora_weights.py LoRALayerWeights.from_config)",
                    fix + ", or retrain with one r and alpha")]


def _module_findings(files: AdapterFiles, config) -> list[Finding]:
    """vllm/lora/utils.py `get_supported_lora_modules`: vLLM adapts its linear layers, and the
    embedding and output head only where the model class lists them in `embedding_modules`
    (llama's does, gemma's lists none); vllm/lora/lora_model.py refuses other modules. Which
    class a base maps to is vLLM's, so an embedding or head is a note."""
    out = []
    vocab = getattr(getattr(config, "text_config", None) or config, "vocab_size", None) if config else None
    for module, parts in sorted(files.factors().items()):
        embedding = "lora_embedding_A" in parts
        if not (embedding or module.rsplit(".", 1)[-1] == "lm_head"):  # vLLM's own test is the name "lm_head"
            continue
        # vllm/lora/lora_model.py `from_lora_tensors`: "The embedding LoRA size ... must be consistent
        # with the base model's vocabulary size"
        if embedding and vocab is not None and parts["lora_embedding_A"][1] != vocab:
            out.append(Finding(RUNTIME, f"module {module!r}", f"its embedding factor covers "
                               f"{parts['lora_embedding_A'][1]} tokens, the base's vocabulary {vocab} "
                               "(vllm/lora/lora_model.py LoRAModel.from_lora_tensors)",
                               "train the adapter on this base"))
            continue
        out.append(Finding(RUNTIME, f"module {module!r}", "vLLM adapts an embedding or output head only where "
                           "its model class lists it in embedding_modules (vllm/lora/utils.py "
                           "get_supported_lora_modules); check your vLLM's model file", refused=False))
    return out
