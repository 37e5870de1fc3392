"""lorakit's adapter engine: LoRA, rsLoRA and DoRA layers numerically equal to PEFT's.

Typical use::

    from lorakit.adapters import LoraConfig, add_adapter, save_adapter, load_adapter, merge_and_unload
    add_adapter(model, LoraConfig(r=16, alpha=32, target_modules="all-linear"))
    ...train...
    save_adapter(model, "out/adapter")          # PEFT's adapter_config.json + adapter_model.safetensors
"""

from lorakit.adapters.config import LoraConfig
from lorakit.adapters.embedding import LoraEmbedding
from lorakit.adapters.io import adapter_state_dict, load_adapter, read_adapter_config, save_adapter
from lorakit.adapters.layers import LoraLayer, LoraLinear
from lorakit.adapters.model import (
    active_adapters,
    adapter_layers,
    adapter_parameters,
    adapter_rows,
    adapters,
    add_adapter,
    delete_adapter,
    disable_adapters,
    merge,
    merge_and_unload,
    set_adapter,
    set_trainable,
    unload,
    unmerge,
)
from lorakit.adapters.modules_to_save import ModulesToSave
from lorakit.adapters.report import ParamReport, trainable_report

__all__ = [
    "LoraConfig", "LoraLayer", "LoraLinear", "LoraEmbedding", "ModulesToSave", "ParamReport",
    "active_adapters", "adapter_layers", "adapter_parameters", "adapter_rows", "adapters", "add_adapter", "adapter_state_dict",
    "delete_adapter", "disable_adapters", "load_adapter", "merge", "merge_and_unload", "read_adapter_config",
    "save_adapter", "set_adapter", "set_trainable", "trainable_report", "unload", "unmerge",
]
