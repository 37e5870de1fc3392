"""lorakit: LoRA fine-tuning of small language models, CPU first."""

__version__ = "0.1.0"
