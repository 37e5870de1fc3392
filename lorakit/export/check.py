"""`lorakit export --check`: what vLLM, llama.cpp and PEFT refuse in an adapter, and why.

llama.cpp's rules are the ones `lorakit export --format gguf` applies before it writes an adapter
GGUF (lorakit/export/gguf_adapter.py, which takes them from llama.cpp's convert_lora_to_gguf.py
and src/llama-adapter.cpp), run here to collect rather than to stop; vLLM's are in
`check_vllm`, PEFT's in `check_peft`. `lorakit train` logs the vLLM and llama.cpp refusals of
the adapter it just saved (`warn_serving`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lorakit.errors import LorakitError, one_line
from lorakit.export.check_peft import check_peft
from lorakit.export.check_vllm import check_vllm
from lorakit.export.findings import AdapterFiles, Finding, format_findings, read_adapter_files

log = logging.getLogger("lorakit")

RUNTIMES = ("vllm", "llama.cpp", "peft")
LLAMA_CPP = "llama.cpp"

__all__ = ["RUNTIMES", "Finding", "base_config", "check_adapter", "format_findings", "warn_serving"]


def _finding(what: str, message: str, refused: bool = True) -> Finding:
    """A llama.cpp finding from one of gguf_adapter's one-line refusals ("why; fix")."""
    why, _, fix = message.rpartition("; ") if "; " in message else (message, "", "")
    return Finding(LLAMA_CPP, what, why, fix, refused)


def check_llama_cpp(files: AdapterFiles, config=None) -> list[Finding]:
    """What a llama.cpp adapter GGUF cannot hold of `files` (`config`: the base's, if known)."""
    from lorakit.export.gguf_adapter import config_refusals, module_refusal, read_factors
    from lorakit.export.names import gguf_target

    refused = config_refusals(files.config, files.cfg_file)
    if refused:  # the tensors are not read: they are refused for the same reasons
        return [_finding(key, message) for key, message in refused.items()]
    try:
        factors, _ = read_factors(files.dir)
    except LorakitError as exc:
        return [_finding("tensors", str(exc))]
    out = []
    if files.config.get("rank_pattern") or files.config.get("alpha_pattern"):
        # convert_lora_to_gguf.py writes the config's one lora_alpha and llama.cpp divides it by each
        # tensor's rank; lorakit export carries each module's own scale in its lora_b instead
        out.append(Finding(LLAMA_CPP, "rank_pattern/alpha_pattern", "llama.cpp's convert_lora_to_gguf.py "
                           "reads lora_alpha only, so its file scales these modules otherwise than PEFT",
                           "write the GGUF with lorakit export --format gguf, which keeps each module's scale",
                           refused=False))
    if config is None:
        out.append(Finding(LLAMA_CPP, "base model", "unknown, so whether each module has a tensor in llama.cpp's "
                           "layout and whether the base ties its embedding to the output head were not checked",
                           "pass the base with --model", refused=False))
        return out
    try:
        target = gguf_target(config)
    except LorakitError as exc:
        return out + [_finding("base model", str(exc))]
    text = getattr(config, "text_config", None) or config
    tied = bool(getattr(text, "tie_word_embeddings", False))
    for f in factors:
        message = module_refusal(f, target, tied, files.dir)
        if message:
            out.append(_finding(f"module {f.module!r}", message))
    return out


def check_adapter(adapter_dir: str | os.PathLike, runtime: str, *, config=None,
                  max_lora_rank: int | None = None) -> list[Finding]:
    """Findings for serving the adapter in `adapter_dir` with `runtime` (vllm, llama.cpp, peft or
    all). `config`: the base's transformers config when known (without it, what needs it is a
    note); `max_lora_rank`: vLLM's --max-lora-rank (default vLLM's)."""
    if runtime not in (*RUNTIMES, "all"):
        raise LorakitError(f"--check {runtime!r}: choose one of {', '.join(RUNTIMES)} or all")
    files = read_adapter_files(adapter_dir)
    out: list[Finding] = []
    for name in RUNTIMES if runtime == "all" else (runtime,):
        if name == "vllm":
            out += check_vllm(files, config, max_lora_rank)
        elif name == LLAMA_CPP:
            out += check_llama_cpp(files, config)
        else:
            out += check_peft(files)
    return out


def base_config(adapter_dir: str | os.PathLike, model: str | None = None):
    """(config, None) for the base: `model`, else the adapter's recorded one; (None, why) when
    there is none or it cannot be read (then the checks that need it are skipped, and say so)."""
    from transformers import AutoConfig

    from lorakit.merge import recorded_base
    from lorakit.models import resolve_model

    spec = model or recorded_base(adapter_dir)
    if not spec:
        return None, None
    try:
        return AutoConfig.from_pretrained(str(resolve_model(spec, config_only=True))), None
    except (LorakitError, OSError, ValueError) as exc:
        return None, f"{spec!r} could not be read ({one_line(exc, 160)})"


def warn_serving(adapter_dir: str | os.PathLike, config) -> None:
    """Log as warnings what vLLM and llama.cpp would refuse in the adapter just saved; never raises."""
    adapter_dir = Path(adapter_dir)
    try:
        files = read_adapter_files(adapter_dir)  # read once for both runtimes
        findings = check_vllm(files, config) + check_llama_cpp(files, config)
    except Exception as exc:  # a check must never fail the run that just saved its adapter
        log.warning("serving check of %s skipped: %s", adapter_dir, one_line(exc))
        return
    refused = [f for f in findings if f.refused]
    if refused:
        log.warning("serving %s as an adapter (details: lorakit export --check all %s):", adapter_dir, adapter_dir)
        for f in refused:
            log.warning("  %s", f.line())
