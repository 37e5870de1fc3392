"""`lorakit export`: adapters and merged models out to GGUF (llama.cpp, Ollama, LM Studio)."""

from __future__ import annotations

import argparse

from lorakit.argtypes import one_line_errors
from lorakit.errors import LorakitError
from lorakit.export.encode import ADAPTER_OUTTYPES, OUTTYPES

CHECK_RUNTIMES = ("vllm", "llama.cpp", "peft", "all")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `export` to the CLI."""
    p = one_line_errors(sub.add_parser(
        "export", help="an adapter (or the merged model) as GGUF for llama.cpp and Ollama, with a Modelfile",
        description="Writes a llama.cpp adapter GGUF (general.type=adapter) that llama.cpp loads with --lora beside "
                    "its base GGUF; with --merged, one model GGUF with the adapter folded in. An Ollama Modelfile "
                    "is written next to it (FILE.Modelfile). DoRA adapters and modules_to_save export --merged only. "
                    "With --check RUNTIME ADAPTER nothing is written: it says what vLLM, llama.cpp or PEFT would "
                    "refuse in the adapter, and why."))
    p.add_argument("adapter_dir", nargs="?", metavar="ADAPTER",
                   help="with --check: the adapter directory (or --adapter)")
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="adapter directory (PEFT format); required unless ADAPTER is given with --check")
    p.add_argument("--out", default=None, metavar="FILE.gguf",
                   help="the GGUF file to write (atomically); required unless --check")
    p.add_argument("--check", default=None, metavar="RUNTIME", choices=CHECK_RUNTIMES,
                   help=f"write nothing: say what {{{','.join(CHECK_RUNTIMES)}}} would refuse in the adapter and why, "
                        "one line each; exit 1 if anything is refused, else 0")
    p.add_argument("--max-lora-rank", type=int, default=None, metavar="N",
                   help="with --check vllm: the --max-lora-rank vLLM will run with (default vLLM's, 16)")
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

    if args.check:
        return cmd_check(args)
    if args.adapter_dir is not None:
        raise LorakitError(f"a positional ADAPTER ({args.adapter_dir}) goes with --check only; to export, pass "
                           "--adapter DIR --out FILE.gguf")
    if not args.adapter or not args.out:
        raise LorakitError("--adapter DIR and --out FILE.gguf are required to export (or --check RUNTIME ADAPTER "
                           "to check an adapter)")
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


def cmd_check(args: argparse.Namespace) -> int:
    """`lorakit export --check RUNTIME ADAPTER`: one line per finding; 1 if anything is refused."""
    from lorakit.export.check import RUNTIMES, base_config, check_adapter, format_findings

    if args.adapter_dir and args.adapter and args.adapter_dir != args.adapter:
        raise LorakitError(f"two adapters given ({args.adapter_dir} and --adapter {args.adapter}); check one")
    adapter = args.adapter_dir or args.adapter
    if not adapter:
        raise LorakitError("--check needs the adapter: lorakit export --check RUNTIME ADAPTER_DIR")
    if args.out or args.merged:
        raise LorakitError("--check writes nothing; drop --out and --merged (or drop --check to export)")
    runtimes = list(RUNTIMES) if args.check == "all" else [args.check]
    config = None
    if args.check != "peft":  # PEFT's rules need no base
        config, why = base_config(adapter, args.model)
        if why:
            print(f"note: base model {why}; the checks that need it are skipped")
    findings = check_adapter(adapter, args.check, config=config, max_lora_rank=args.max_lora_rank)
    for line in format_findings(findings, runtimes):
        print(line)
    return 1 if any(f.refused for f in findings) else 0
