"""`LoraConfig`: what to adapt and how, and its mapping to PEFT's `adapter_config.json`."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from lorakit.errors import LorakitError, short_repr

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
    rank_pattern: dict[str, int] = field(
        default_factory=dict, metadata={"help": "per-module rank: {module-name suffix or regex: r} (PEFT's)"}
    )
    alpha_pattern: dict[str, float] = field(
        default_factory=dict, metadata={"help": "per-module alpha: {module-name suffix or regex: alpha} (PEFT's)"}
    )

    def __post_init__(self) -> None:
        if not _is_int(self.r) or self.r <= 0:
            raise LorakitError(f"LoRA rank r must be a positive integer, got {short_repr(self.r)}")
        if not _is_number(self.alpha) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise LorakitError(f"LoRA alpha must be positive, got {short_repr(self.alpha)}")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise LorakitError(f"LoRA dropout must be in [0, 1), got {short_repr(self.dropout)}")
        for flag in ("use_rslora", "use_dora"):
            if not isinstance(getattr(self, flag), bool):
                raise LorakitError(f"{flag} must be true or false, got {short_repr(getattr(self, flag))}")
        if self.init not in INITS:
            raise LorakitError(f"unknown LoRA init {self.init!r}: use one of {', '.join(INITS)}")
        if self.bias != "none":
            raise LorakitError(f"bias={self.bias!r} is not supported: use bias='none'")
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = list(self.target_modules)
        _check_targets(self.target_modules)
        if _is_int(self.layers_to_transform):
            self.layers_to_transform = [self.layers_to_transform]
        if self.layers_to_transform is not None and not (
                isinstance(self.layers_to_transform, list) and all(_is_int(i) for i in self.layers_to_transform)):
            raise LorakitError(f"layers_to_transform must be a list of layer indices, got "
                               f"{short_repr(self.layers_to_transform)}")
        _check_pattern("rank_pattern", self.rank_pattern, lambda v: _is_int(v) and v > 0, "positive integers")
        _check_pattern("alpha_pattern", self.alpha_pattern, lambda v: _is_number(v) and math.isfinite(v) and v > 0,
                       "positive numbers")
        if self.modules_to_save is not None and not _str_list(self.modules_to_save):
            raise LorakitError(f"modules_to_save must be a list of module names, got "
                               f"{short_repr(self.modules_to_save)}")

    @property
    def scaling(self) -> float:
        """Factor applied to B @ A: alpha/r, or alpha/sqrt(r) with rsLoRA."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def for_module(self, module: str) -> "LoraConfig":
        """This config with the r and alpha that `rank_pattern` / `alpha_pattern` give `module` (a
        dotted module name of the model); itself when neither names it."""
        r, alpha = pattern_value(self.rank_pattern, module, self.r), pattern_value(self.alpha_pattern, module, self.alpha)
        if (r, alpha) == (self.r, self.alpha):
            return self
        return replace(self, r=r, alpha=alpha, rank_pattern={}, alpha_pattern={})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (for the resolved config written next to outputs)."""
        return asdict(self)

    def to_peft(self, resolved_targets: list[str], base_model: str | None, task_type: str | None,
                revision: str | None = None) -> dict[str, Any]:
        """The `adapter_config.json` dict PEFT reads (only keys PEFT knows); `revision`: the base's Hub
        revision when it came from the Hub at one (PEFT loads that revision of the base)."""
        return {
            "peft_type": "LORA",
            "task_type": task_type,
            "base_model_name_or_path": base_model,
            "revision": revision,
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
            "rank_pattern": dict(self.rank_pattern),
            "alpha_pattern": dict(self.alpha_pattern),
            "lora_bias": False,
        }

    @classmethod
    def from_peft(cls, data: dict[str, Any], source: str = "adapter_config.json") -> "LoraConfig":
        """Build from a PEFT `adapter_config.json` dict; refuses what lorakit cannot reproduce exactly.

        Every field must have the type PEFT writes: a rank of 8.5 or "8", or use_dora "false", is
        refused naming the field, never truncated or read as truthy.
        """
        peft_type = data.get("peft_type", "LORA")
        if str(peft_type).upper() != "LORA":
            raise LorakitError(f"{source}: peft_type {short_repr(peft_type)} is not supported; "
                               "lorakit reads LORA adapters only")
        if "r" not in data:
            raise LorakitError(f"{source}: required field 'r' is missing")
        check_peft_types(data, source)
        if data.get("lora_bias"):
            raise LorakitError(f"{source}: lora_bias=true is not supported; train with bias='none'")
        init = data.get("init_lora_weights", True)
        init_name = "gaussian" if init == "gaussian" else "kaiming"
        try:
            return cls(
                r=data["r"],
                alpha=data.get("lora_alpha", 8),
                dropout=data.get("lora_dropout") or 0.0,
                target_modules=data.get("target_modules") or [],
                use_rslora=bool(data.get("use_rslora")),  # null reads as PEFT's default, false
                use_dora=bool(data.get("use_dora")),
                init=init_name,
                bias=data.get("bias", "none") or "none",
                modules_to_save=data.get("modules_to_save"),
                layers_to_transform=data.get("layers_to_transform"),
                rank_pattern=data.get("rank_pattern") or {},
                alpha_pattern=data.get("alpha_pattern") or {},
            )
        except LorakitError as exc:
            raise LorakitError(f"{source}: {exc}") from None

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Help text of each field, for CLI and docs."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern rule (peft/utils/other.py, get_pattern_key): the first key
    that, as a regex, matches the whole module name or its end after a dot."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def peft_scaling(config: dict[str, Any], module: str, rank: int) -> float:
    """PEFT's scale of one module of an `adapter_config.json` dict, `rank` read from its factors:
    its alpha (`alpha_pattern`, else `lora_alpha`) over the rank, or over sqrt(rank) with rsLoRA."""
    alpha = float(pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8)))
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _check_pattern(name: str, pattern: object, ok, want: str) -> None:
    if not isinstance(pattern, dict) or not all(isinstance(k, str) and ok(v) for k, v in pattern.items()):
        raise LorakitError(f"'{name}' must map module names to {want}, got {short_repr(pattern)}")
    for key in pattern:
        try:
            re.compile(key)
        except re.error as exc:
            raise LorakitError(f"'{name}' key {short_repr(key)} is not a valid regular expression ({exc})") from None


def _check_targets(targets: object) -> None:
    """target_modules: a list of module-name suffixes, or a preset or full-match regex string."""
    if isinstance(targets, str):
        if targets in PRESET_TARGETS:
            return
        try:
            re.compile(targets)
        except re.error as exc:
            raise LorakitError(f"target_modules {short_repr(targets)} is not a valid regular expression "
                               f"({exc})") from None
    elif not _str_list(targets):
        raise LorakitError(f"target_modules must be a list of module names or a regex string, "
                           f"got {short_repr(targets)}")


# adapter_config.json fields and what each must be, as PEFT writes them (null: PEFT's default)
_PEFT_TYPES: dict[str, tuple[str, Any]] = {
    "r": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "lora_alpha": ("a positive number", lambda v: _is_number(v) and math.isfinite(v) and v > 0),
    "lora_dropout": ("a number in [0, 1)", lambda v: v is None or (_is_number(v) and 0 <= v < 1)),
    "target_modules": ("a list of module names or a regex string", lambda v: v is None or isinstance(v, str)
                       or _str_list(v)),
    "use_rslora": ("true or false", lambda v: v is None or isinstance(v, bool)),
    "use_dora": ("true or false", lambda v: v is None or isinstance(v, bool)),
    "lora_bias": ("true or false", lambda v: v is None or isinstance(v, bool)),
    "init_lora_weights": ("true, false or an init name", lambda v: v is None or isinstance(v, (bool, str))),
    "bias": ("a string ('none')", lambda v: v is None or isinstance(v, str)),
    "modules_to_save": ("a list of module names", lambda v: v is None or _str_list(v)),
    "layers_to_transform": ("a layer index or a list of them", lambda v: v is None or _is_int(v)
                            or (isinstance(v, list) and all(_is_int(i) for i in v))),
    "rank_pattern": ("an object of module name -> positive integer", lambda v: v is None or isinstance(v, dict)
                     and all(_is_int(r) and r > 0 for r in v.values())),
    "alpha_pattern": ("an object of module name -> positive number", lambda v: v is None or isinstance(v, dict)
                      and all(_is_number(a) and math.isfinite(a) and a > 0 for a in v.values())),
}


def check_peft_types(data: dict[str, Any], source: str) -> None:
    """Refuse, naming the file and the field, a value of a type PEFT never writes there."""
    for key, (want, ok) in _PEFT_TYPES.items():
        if key in data and not ok(data[key]):
            what = "LoRA rank r" if key == "r" else f"'{key}'"
            raise LorakitError(f"{source}: {what} must be {want}, got {short_repr(data[key])}; "
                               f"fix the field '{key}' or re-save the adapter")
