"""What the planner needs to know about a model, read from its config without allocating weights.

The model is built on the meta device, so parameter counts, which linears an adapter targets
and which are quantized come from the same code that trains (`lorakit.adapters`,
`lorakit.quant`), for any architecture transformers can build.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from lorakit.errors import LorakitError
from lorakit.families import family_for
from lorakit.naming import layer_index


@dataclass
class ArchFacts:
    """Sizes of one decoder-only model (counts of parameters, not bytes)."""

    model_type: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_dim: int  # num_key_value_heads * head_dim
    vocab: int
    params: int  # every parameter, tied ones once
    linear_params: int  # weights of the linears `quantize_model` replaces (not the head)
    linear_bias_params: int
    adapter_params: int  # LoRA A + B of the targeted linears at the requested rank
    adapted_linears: int
    adapted_in_features: int  # sum of in_features over adapted linears
    input_embedding_params: int = 0  # only when not tied to the output head
    untied_head_params: int = 0  # the output head's weight when it is not the input embedding's
    checkpoint_fp32: bool = False  # config.json says the weights are stored in float32
    saved_input_groups: dict[int, int] = field(default_factory=dict)  # in_features -> inputs saved per layer
    # per layer and token: saved linear inputs that lean layers recompute (norm outputs, gated product)
    recomputable_inputs: int = 0


def load_config(spec):
    """A transformers config from a config object, a config.json path, or a model spec/alias (a Hub
    id fetches its config.json only)."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(spec, PretrainedConfig):
        return spec
    path = Path(os.fspath(spec)).expanduser()
    if path.is_file() and path.suffix == ".json":
        data = json.loads(path.read_text())
        if "model_type" not in data:
            raise LorakitError(f"{path} has no 'model_type'; pass a Hugging Face config.json")
        return AutoConfig.for_model(**data)
    from lorakit.models import resolve_model

    return AutoConfig.from_pretrained(str(resolve_model(spec, config_only=True)))


def _intermediate(config) -> int:
    size = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    return int(size or 4 * config.hidden_size)


def arch_facts(config, rank: int, targets: list[str] | str, method: str) -> ArchFacts:
    """Count parameters, quantizable linears and adapter parameters of `config` on the meta device."""
    from lorakit.adapters.config import LoraConfig
    from lorakit.adapters.model import plan_targets
    from lorakit.quant.load import build_on_meta
    from lorakit.quant.model import dense_weight_out_in, quantizable_linears

    # read before building: from_config(dtype=float32) overwrites config.dtype
    stored = str(getattr(config, "dtype", None) or "")
    model = build_on_meta(copy.deepcopy(config))  # from_config may change the config it is given
    params = sum(p.numel() for p in model.parameters())
    linears = quantizable_linears(model)
    linear_params = sum(m.weight.numel() for _, m in linears)
    bias_params = sum(m.bias.numel() for _, m in linears if m.bias is not None)
    lean = family_for(config).lean
    recomputed_input_of = lean.recomputed_input_of if lean else frozenset()
    adapter_params, adapted, adapted_in, groups, recomputable = 0, 0, 0, set(), set()
    if method != "full":
        chosen, _ = plan_targets(model, LoraConfig(r=rank, target_modules=targets))
        for name, module in chosen:
            if isinstance(module, nn.Embedding):
                adapter_params += rank * (module.num_embeddings + module.embedding_dim)
                continue
            out_f, in_f = dense_weight_out_in(module).shape
            adapter_params += rank * (in_f + out_f)
            adapted += 1
            adapted_in += in_f
            # linears under the same parent with the same input width read one tensor (q/k/v,
            # gate/up): autograd saves it once for all their LoRA A matmuls
            groups.add((layer_index(name), name.rpartition(".")[0], in_f))
            if name.rpartition(".")[2] in recomputed_input_of:
                recomputable.add((layer_index(name), name.rpartition(".")[0], in_f))
    else:
        for name, module in linears:
            out_f, in_f = dense_weight_out_in(module).shape
            groups.add((layer_index(name), name.rpartition(".")[0], in_f))
            if name.rpartition(".")[2] in recomputed_input_of:
                recomputable.add((layer_index(name), name.rpartition(".")[0], in_f))
    n_layers = int(config.num_hidden_layers)
    per_layer: dict[int, int] = {}
    for _, _, in_f in groups:
        per_layer[in_f] = per_layer.get(in_f, 0) + 1
    per_layer = {k: -(-v // n_layers) for k, v in per_layer.items()}  # per layer, rounded up
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    untied_embed = 0 if embed is None or (head is not None and head.weight is embed.weight) else embed.weight.numel()
    untied_head = 0 if head is None or (embed is not None and head.weight is embed.weight) else head.weight.numel()
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    return ArchFacts(
        model_type=config.model_type, layers=n_layers, hidden=int(config.hidden_size),
        intermediate=_intermediate(config), heads=heads, kv_dim=kv_heads * head_dim, vocab=int(config.vocab_size),
        params=params, linear_params=linear_params, linear_bias_params=bias_params,
        adapter_params=adapter_params, adapted_linears=adapted, adapted_in_features=adapted_in,
        saved_input_groups=per_layer, input_embedding_params=untied_embed, untied_head_params=untied_head,
        recomputable_inputs=-(-sum(in_f for _, _, in_f in recomputable) // n_layers),
        checkpoint_fp32=stored.replace("torch.", "") == "float32",
    )
