"""What trains: a LoRA/DoRA adapter, every weight (full), or only the output head.

Full fine-tuning and head-only are the baselines LoRA is judged against.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.adapters import LoraConfig, add_adapter, set_trainable
from lorakit.adapters.targets import parse_targets
from lorakit.errors import LorakitError
from lorakit.plan.malloc import own_weights
from lorakit.train.config import TrainConfig
from lorakit.train.fuse import fuse_projections
from lorakit.train.lean import lean_layers
from lorakit.train.precision import store_frozen


def lora_config(cfg: TrainConfig) -> LoraConfig:
    """The adapter a run trains, from its settings."""
    return LoraConfig(r=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout, target_modules=parse_targets(cfg.targets),
                      use_rslora=cfg.rslora, use_dora=cfg.method == "dora")


def untie_output_head(model: nn.Module) -> nn.Module:
    """Give the output head its own weight when it shares the input embedding's."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and emb is not None and head.weight is emb.weight:
        head.weight = nn.Parameter(emb.weight.detach().clone())
        model.config.tie_word_embeddings = False
    return head


def prepare_model(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Attach what `cfg.method` trains and freeze the rest; returns the model."""
    torch.manual_seed(cfg.seed)  # adapter init is part of the run's identity
    if cfg.method in ("lora", "dora", "qlora"):
        add_adapter(model, lora_config(cfg))
        set_trainable(model, "default")
    elif cfg.method == "full":
        model.requires_grad_(True)
    elif cfg.method == "head":
        model.requires_grad_(False)
        head = untie_output_head(model)
        if head is None:
            raise LorakitError(f"{type(model).__name__} has no output head to train; use --method lora")
        head.weight.requires_grad_(True)
    if cfg.grad_checkpoint:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: modules whose class transformers lists in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def speed_and_memory(model: nn.Module, *, fuse: bool = True, lean_memory: bool = True,
                     grad_checkpoint: bool = False, compile: bool = False,
                     frozen_dtype: torch.dtype | None = None) -> None:
    """What --fuse, --lean-memory, --compile and --precision do to a prepared model (the trainer and the
    benchmarks call this).

    Lean layers only without checkpointing (which discards those activations anyway). After fusing,
    the weights leave the file mapping; a quantized base (nothing fused) keeps its file-backed
    embedding, of which only the rows seen are ever read. `frozen_dtype` (`precision.frozen_dtype`):
    the frozen projections are recast after fusing and before the weights leave the file mapping,
    so no fp32 copy is made only to be dropped.
    `compile` compiles each decoder layer instead of fusing and leaning: fused parts are cached by
    tensor identity and lean layers register recipes through a ContextVar, and dynamo breaks its
    graph at both. Compiled, the layers' pointwise ops fuse and AOTAutograd's partitioner recomputes
    cheap ops in backward rather than saving them (a fused-projection cache dynamo can trace, keyed
    by `is`, ran without graph breaks but no faster: 242 vs 249 tok/s). Where it pays most is
    under bf16 autocast, whose casts it fuses: SmolLM2-135M at 4 x 256 on 2 cores, 619-680 tok/s
    compiled vs 565 eager, peak 2.23 vs 2.62 GB (bench/RESULTS.md, round 3).
    """
    layers = decoder_layers(model) if compile else []
    if compile and not layers:
        raise LorakitError(f"--compile: {type(model).__name__} names no decoder layer class in "
                           "_no_split_modules; run without --compile")
    if not compile and lean_memory and not grad_checkpoint:
        lean_layers(model)
    fused = not compile and fuse and fuse_projections(model)
    if frozen_dtype is not None:
        store_frozen(model, frozen_dtype)
    for layer in layers:
        layer.compile()
    if fused and lean_memory:
        own_weights(model)
