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
from lorakit.adapters.prefix import PrefixTuningConfig, add_prefix_tuning, prefix_cache
from lorakit.adapters.prompt import PromptTuningConfig, add_prompt_tuning
# importing prompt_io registers its loader: load_adapter reads PREFIX_TUNING / PROMPT_TUNING folders
from lorakit.adapters.prompt_io import load_virtual_adapter, save_virtual_adapter
from lorakit.adapters.report import ParamReport, trainable_report
from lorakit.adapters.tasks import add_classifier_adapter, classifier_heads
from lorakit.adapters.virtual import VirtualAdapter, remove_virtual_adapter, virtual_adapter, virtual_positions

__all__ = [
    "LoraConfig", "LoraLayer", "LoraLinear", "LoraEmbedding", "ModulesToSave", "ParamReport",
    "active_adapters", "add_classifier_adapter", "adapter_layers", "adapter_parameters", "adapter_rows", "adapters", "add_adapter", "adapter_state_dict",
    "classifier_heads", "delete_adapter", "disable_adapters", "load_adapter", "merge", "merge_and_unload", "read_adapter_config",
    "save_adapter", "set_adapter", "set_trainable", "trainable_report", "unload", "unmerge",
    # prefix and prompt tuning (virtual tokens)
    "PrefixTuningConfig", "PromptTuningConfig", "VirtualAdapter", "add_prefix_tuning", "add_prompt_tuning",
    "load_virtual_adapter", "prefix_cache", "remove_virtual_adapter", "save_virtual_adapter", "virtual_adapter",
    "virtual_positions",
]
