"""`lorakit export`: adapters and merged models out to GGUF (llama.cpp, Ollama, LM Studio)."""

from __future__ import annotations

import argparse

from lorakit.argtypes import one_line_errors
from lorakit.errors import LorakitError
from lorakit.export.encode import ADAPTER_OUTTYPES, OUTTYPES


def register(sub: argparse._SubParsersAction) -> None:
    """Add `export` to the CLI."""
    p = one_line_errors(sub.add_parser(
        "export", help="an adapter (or the merged model) as GGUF for llama.cpp and Ollama, with a Modelfile",
        description="Writes a llama.cpp adapter GGUF (general.type=adapter) that llama.cpp loads with --lora beside "
                    "its base GGUF; with --merged, one model GGUF with the adapter folded in. An Ollama Modelfile "
                    "is written next to it (FILE.Modelfile). DoRA adapters and modules_to_save export --merged only."))
    p.add_argument("--adapter", required=True, metavar="DIR", help="adapter directory (PEFT format)")
    p.add_argument("--out", required=True, metavar="FILE.gguf", help="the GGUF file to write (atomically)")
    p.add_argument("--format", default="gguf", choices=("gguf",), help="output format (default gguf)")
    p.add_argument("--model", default=None,
                   help="base model: alias, .gguf file, folder or Hub id (default: the adapter's recorded base)")
    p.add_argument("--merged", action="store_true",
                   help="fold the adapter into the base and write the whole model (needed for DoRA, "
                        "modules_to_save, QLoRA)")
    p.add_argument("--outtype", default=None, metavar="TYPE",
                   help=f"tensor encoding: adapter {{{','.join(ADAPTER_OUTTYPES)}}} (default f32); merged "
                        f"{{{','.join(OUTTYPES)}}} (default f16) for the tensors the adapter changes (a GGUF "
                        "base's other tensors are copied as they are; a Hugging Face base is written whole in it)")
    p.add_argument("--quantize", default="none", metavar="{none,nf4,int8}",
                   help="with --merged: how the base was quantized in training (QLoRA: nf4), as `lorakit merge`")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Handler of `lorakit export`."""
    from lorakit.export.run import export_adapter, export_merged

    if args.merged:
        paths = export_merged(args.adapter, args.out, model=args.model, outtype=args.outtype or "f16",
                              quantize=args.quantize, force=args.force)
    else:
        if args.quantize != "none":
            raise LorakitError("--quantize applies to --merged only; an adapter GGUF (QLoRA's too) goes beside any "
                               "base GGUF, quantized or not")
        paths = export_adapter(args.adapter, args.out, model=args.model, outtype=args.outtype or "f32",
                               force=args.force)
    print(f"wrote {paths['gguf']} and {paths['modelfile']} (base: {paths['base']})")
    print(f"  ollama create NAME -f {paths['modelfile']}")
    return 0
