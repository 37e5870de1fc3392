"""`LoraConfig`: what to adapt and how, and its mapping to PEFT's `adapter_config.json`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lorakit.errors import LorakitError

PRESET_TARGETS = ("all-linear", "attention", "mlp")
INITS = ("kaiming", "gaussian")


@dataclass
class LoraConfig:
    """Hyper-parameters of one LoRA adapter (names follow PEFT where PEFT has one)."""

    r: int = field(default=16, metadata={"help": "rank of the update B @ A"})
    alpha: float = field(default=32, metadata={"help": "scale numerator: scaling = alpha / r (or alpha / sqrt(r))"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input only"})
    target_modules: str | list[str] = field(
        default="all-linear",
        metadata={
            "help": "module name suffixes (list), a full-match regex (string), "
            "or a preset: all-linear, attention, mlp"
        },
    )
    use_rslora: bool = field(default=False, metadata={"help": "rank-stabilised scaling alpha/sqrt(r) (Kalajdzievski 2023)"})
    use_dora: bool = field(default=False, metadata={"help": "weight-decomposed LoRA (Liu et al. 2024, DoRA)"})
    init: str = field(default="kaiming", metadata={"help": "init of A: kaiming (PEFT default) or gaussian (std 1/r)"})
    bias: str = field(default="none", metadata={"help": "only 'none' is supported"})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "modules trained in full and saved with the adapter (e.g. a classifier head)"}
    )
    layers_to_transform: list[int] | None = field(
        default=None, metadata={"help": "adapt only these decoder-layer indices"}
    )

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0:
            raise LorakitError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if self.alpha <= 0:
            raise LorakitError(f"LoRA alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise LorakitError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if self.init not in INITS:
            raise LorakitError(f"unknown LoRA init {self.init!r}: use one of {', '.join(INITS)}")
        if self.bias != "none":
            raise LorakitError(f"bias={self.bias!r} is not supported: use bias='none'")
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = list(self.target_modules)
        if isinstance(self.layers_to_transform, int):
            self.layers_to_transform = [self.layers_to_transform]

    @property
    def scaling(self) -> float:
        """Factor applied to B @ A: alpha/r, or alpha/sqrt(r) with rsLoRA."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (for the resolved config written next to outputs)."""
        return asdict(self)

    def to_peft(self, resolved_targets: list[str], base_model: str | None, task_type: str | None) -> dict[str, Any]:
        """The `adapter_config.json` dict PEFT reads (only keys PEFT knows)."""
        return {
            "peft_type": "LORA",
            "task_type": task_type,
            "base_model_name_or_path": base_model,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": resolved_targets,
            "use_rslora": self.use_rslora,
            "use_dora": self.use_dora,
            "init_lora_weights": True if self.init == "kaiming" else self.init,
            "bias": self.bias,
            "modules_to_save": self.modules_to_save,
            "layers_to_transform": self.layers_to_transform,
            "fan_in_fan_out": False,
            "inference_mode": True,
            "rank_pattern": {},
            "alpha_pattern": {},
            "lora_bias": False,
        }

    @classmethod
    def from_peft(cls, data: dict[str, Any], source: str = "adapter_config.json") -> "LoraConfig":
        """Build from a PEFT `adapter_config.json` dict; refuses what lorakit cannot reproduce exactly."""
        peft_type = data.get("peft_type", "LORA")
        if str(peft_type).upper() != "LORA":
            raise LorakitError(f"{source}: peft_type {peft_type!r} is not supported; lorakit reads LORA adapters only")
        for key in ("rank_pattern", "alpha_pattern"):
            if data.get(key):
                raise LorakitError(f"{source}: per-module {key} is not supported yet; re-save with a single r/alpha")
        if data.get("lora_bias"):
            raise LorakitError(f"{source}: lora_bias=true is not supported; train with bias='none'")
        init = data.get("init_lora_weights", True)
        init_name = "gaussian" if init == "gaussian" else "kaiming"
        try:
            return cls(
                r=int(data["r"]),
                alpha=data.get("lora_alpha", 8),
                dropout=float(data.get("lora_dropout", 0.0) or 0.0),
                target_modules=data.get("target_modules") or [],
                use_rslora=bool(data.get("use_rslora", False)),
                use_dora=bool(data.get("use_dora", False)),
                init=init_name,
                bias=data.get("bias", "none") or "none",
                modules_to_save=data.get("modules_to_save"),
                layers_to_transform=data.get("layers_to_transform"),
            )
        except KeyError as exc:
            raise LorakitError(f"{source}: required field {exc.args[0]!r} is missing") from None
        except LorakitError as exc:
            raise LorakitError(f"{source}: {exc}") from None

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Help text of each field, for CLI and docs."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}
