"""Helpers for adapter tests: randomise adapter weights so B = 0 does not hide mistakes."""

from __future__ import annotations

import torch

from lorakit.adapters import adapter_layers


def randomize_adapter(model: torch.nn.Module, name: str = "default", seed: int = 0) -> None:
    """Give every LoRA factor and DoRA magnitude of adapter `name` random non-zero values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for key, p in layer.adapter_parameters(name).items():
                noise = torch.randn(p.shape, generator=g) * 0.1
                if key == "lora_magnitude_vector":
                    p.mul_(1 + noise)  # stay near ||W|| so DoRA's output stays sane
                else:
                    p.copy_(noise)
