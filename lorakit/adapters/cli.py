"""`lorakit inspect`: architecture summary, the modules an adapter would wrap, parameter table; or
(``--adapter``) what a saved adapter folder holds."""

from __future__ import annotations

import argparse
from collections import Counter

from lorakit.adapters.config import LoraConfig
from lorakit.argtypes import int_at_least
from lorakit.adapters.targets import parse_targets
from lorakit.errors import LorakitError

INSPECT_METHODS = ("lora", "prefix", "prompt")


def add_lora_args(p: argparse.ArgumentParser) -> None:
    """The adapter flags shared by inspect and train."""
    h = LoraConfig.field_help()
    p.add_argument("--rank", "-r", type=int, default=16, help=h["r"])
    p.add_argument("--alpha", type=float, default=None, help=h["alpha"] + " (default: 2 x rank)")
    p.add_argument("--dropout", type=float, default=0.0, help=h["dropout"])
    p.add_argument("--targets", default="all-linear", help=h["target_modules"] + "; comma-separated names for a list")
    p.add_argument("--rslora", action="store_true", help=h["use_rslora"])
    p.add_argument("--dora", action="store_true", help=h["use_dora"])
    p.add_argument("--init", default="kaiming", choices=["kaiming", "gaussian"], help=h["init"])
    p.add_argument("--layers", type=int, nargs="*", default=None, help=h["layers_to_transform"])
    p.add_argument("--modules-to-save", nargs="*", default=None, help=h["modules_to_save"])


def lora_config_from_args(args: argparse.Namespace) -> LoraConfig:
    """Build a `LoraConfig` from the flags of `add_lora_args`."""
    return LoraConfig(r=args.rank, alpha=args.alpha if args.alpha is not None else 2 * args.rank,
                      dropout=args.dropout, target_modules=parse_targets(args.targets), use_rslora=args.rslora, use_dora=args.dora,
                      init=args.init, layers_to_transform=args.layers, modules_to_save=args.modules_to_save)


def _check_inspect_args(args: argparse.Namespace) -> None:
    """Refuse, in one line, flags that do not go with --method or --adapter."""
    if args.adapter is not None and (args.method != "lora" or args.virtual_tokens is not None):
        raise LorakitError("--adapter describes a saved adapter; drop --method / --virtual-tokens (the adapter's "
                           "own settings are shown)")
    virtual = args.method in ("prefix", "prompt")
    for flag, given, applies in (("--virtual-tokens", args.virtual_tokens is not None, virtual),
                                 ("--prefix-projection", args.prefix_projection, args.method == "prefix"),
                                 ("--encoder-hidden-size", args.encoder_hidden_size is not None, args.prefix_projection),
                                 ("--dora", args.dora, not virtual)):
        if given and not applies:
            raise LorakitError(f"{flag} does not apply to --method {args.method}"
                               f"{' without --prefix-projection' if flag == '--encoder-hidden-size' else ''}; drop it")


def _virtual(model, args: argparse.Namespace):
    """Attach the prefix/prompt adapter `args` describes (random init) and return its record."""
    from lorakit.adapters.prefix import PrefixTuningConfig, add_prefix_tuning
    from lorakit.adapters.prompt import PromptTuningConfig, add_prompt_tuning

    n = {} if args.virtual_tokens is None else {"num_virtual_tokens": args.virtual_tokens}  # else the configs' default
    if args.method == "prefix":
        return add_prefix_tuning(model, PrefixTuningConfig(**n, prefix_projection=args.prefix_projection,
                                                           encoder_hidden_size=args.encoder_hidden_size))
    return add_prompt_tuning(model, PromptTuningConfig(**n))


def cmd_inspect(args: argparse.Namespace) -> int:
    from lorakit.adapters.describe import describe_adapter, virtual_summary
    from lorakit.adapters.model import add_adapter
    from lorakit.adapters.report import trainable_report
    from lorakit.models import load_model, resolve_model

    _check_inspect_args(args)
    if args.adapter is not None:
        print("\n".join(describe_adapter(args.adapter)))
        return 0
    config = lora_config_from_args(args) if args.method == "lora" else None
    path = resolve_model(args.model)
    model, _ = load_model(path, with_tokenizer=False)
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())
    print(f"model: {path}")
    print(f"architecture: {type(model).__name__} ({cfg.model_type}), {total / 1e6:.1f} M parameters, "
          f"{getattr(cfg, 'num_hidden_layers', '?')} layers, hidden {getattr(cfg, 'hidden_size', '?')}, "
          f"vocab {getattr(cfg, 'vocab_size', '?')}, tied embeddings: {getattr(cfg, 'tie_word_embeddings', False)}")
    if config is None:
        print("\n".join(virtual_summary(_virtual(model, args), model)))
        return 0
    info = add_adapter(model, config)
    kinds = Counter(n.rsplit(".", 1)[-1] for n in info.modules)
    print(f"adapter: r={config.r} alpha={config.alpha} scaling={config.scaling:.4g} "
          f"{'DoRA' if config.use_dora else 'LoRA'}{' rsLoRA' if config.use_rslora else ''}, "
          f"{len(info.modules)} modules: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())))
    print(trainable_report(model).format())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `lorakit inspect` to the top-level parser."""
    p = sub.add_parser("inspect", help="show a model's architecture and what an adapter would train")
    p.add_argument("--model", default=None, help="HF directory, .gguf file, alias or Hub id org/name[@revision] (default: smollm2-135m-instruct)")
    add_lora_args(p)
    p.add_argument("--method", choices=INSPECT_METHODS, default="lora",
                   help="what would train: lora (with --dora: DoRA), prefix (prefix tuning) or prompt (prompt tuning)")
    p.add_argument("--virtual-tokens", type=int_at_least(1), default=None,
                   help="--method prefix/prompt: how many virtual tokens (default 20, as `lorakit train`)")
    p.add_argument("--prefix-projection", action="store_true",
                   help="--method prefix: train the prefix through PEFT's two-layer tanh MLP")
    p.add_argument("--encoder-hidden-size", type=int_at_least(1), default=None,
                   help="--prefix-projection: the MLP's hidden width (default: the width of one layer's keys)")
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="describe a saved adapter folder instead (LoRA/DoRA, prefix or prompt tuning: kind, virtual "
                        "tokens, layers, parameter count), from its files alone")
    p.set_defaults(func=cmd_inspect)
