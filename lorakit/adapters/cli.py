"""`lorakit inspect`: architecture summary, the modules an adapter would wrap, parameter table."""

from __future__ import annotations

import argparse
from collections import Counter

from lorakit.adapters.config import LoraConfig
from lorakit.adapters.targets import parse_targets


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


def cmd_inspect(args: argparse.Namespace) -> int:
    from lorakit.adapters.model import add_adapter
    from lorakit.adapters.report import trainable_report
    from lorakit.models import load_model, resolve_model

    config = lora_config_from_args(args)
    path = resolve_model(args.model)
    model, _ = load_model(path, with_tokenizer=False)
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())
    print(f"model: {path}")
    print(f"architecture: {type(model).__name__} ({cfg.model_type}), {total / 1e6:.1f} M parameters, "
          f"{getattr(cfg, 'num_hidden_layers', '?')} layers, hidden {getattr(cfg, 'hidden_size', '?')}, "
          f"vocab {getattr(cfg, 'vocab_size', '?')}, tied embeddings: {getattr(cfg, 'tie_word_embeddings', False)}")
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
    p.set_defaults(func=cmd_inspect)
