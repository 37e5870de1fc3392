"""`lorakit plan`: predicted peak memory of a training run and whether it fits this machine."""

from __future__ import annotations

import argparse

from lorakit.argtypes import fraction, one_line_errors, positive_int


def _targets(value: str) -> list[str] | str:
    """--targets parsed exactly as `lorakit train` / `inspect` parse it (presets, names, a regex)."""
    from lorakit.adapters.targets import parse_targets

    return parse_targets(value)


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the breakdown; exit 1 when the run won't fit (so scripts can check)."""
    import torch

    from lorakit.models import DEFAULT_MODEL
    from lorakit.plan.arch import load_config
    from lorakit.plan.estimate import NO_FIT, estimate
    from lorakit.plan.speed import resolve_speed

    config = load_config(args.model or DEFAULT_MODEL)
    speed = resolve_speed(model_type=config.model_type, method=args.method, device=torch.device("cpu"),
                          precision=args.precision, compile=args.compile, grad_checkpoint=args.grad_checkpoint,
                          release_memory=args.release_memory)
    est = estimate(config, method=args.method, batch_size=args.batch_size, seq_len=args.seq_len, rank=args.rank,
                   targets=_targets(args.targets), loss_chunk_tokens=args.loss_chunk_tokens,
                   lora_dropout=args.dropout, speed=speed)
    print(f"model: {args.model or DEFAULT_MODEL}  batch {args.batch_size} x {args.seq_len} tokens, "
          f"rank {args.rank}, targets {args.targets}")
    print(speed.format())
    print(est.format())
    return 1 if est.verdict == NO_FIT else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `lorakit plan` to the top-level parser."""
    p = one_line_errors(sub.add_parser("plan", help="predict peak training memory and check it against this machine"))
    p.add_argument("--model", default=None, help="model alias, HF directory, .gguf, Hub id org/name[@revision] (fetches config.json only), or a config.json (default: SmolLM2-135M)")
    p.add_argument("--method", choices=["full", "lora", "qlora"], default="lora")
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--seq-len", type=positive_int, default=512)
    p.add_argument("--rank", type=positive_int, default=16)
    p.add_argument("--targets", default="all-linear", help="all-linear, attention, mlp, module names (a,b,c) or a regex, as for train")
    p.add_argument("--grad-checkpoint", action=argparse.BooleanOptionalAction, default=None,
                   help="as train's --grad-checkpoint (default auto: on for qlora)")
    p.add_argument("--loss-chunk-tokens", type=positive_int, default=None,
                   help="tokens of logits the trainer's loss holds at once (default: as train's --loss-chunk)")
    p.add_argument("--release-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="as train's --release-memory: freed memory goes back to the OS (lower peak, slower; "
                        "default auto: on for qlora)")
    p.add_argument("--dropout", type=fraction, default=0.0, help="LoRA dropout (each adapter then keeps a byte mask of its input)")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                   help="as train's --precision: bf16 holds a LoRA run's frozen linears in bf16")
    p.add_argument("--compile", action="store_true", help="as train's --compile (noted: activations are planned eager)")
    p.set_defaults(func=cmd_plan)
