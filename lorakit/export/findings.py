"""What `lorakit export --check` reports, and the adapter files the runtime rules read.

A `Finding` is one thing a runtime refuses (or, with ``refused=False``, a note: something it
could not check or that depends on the runtime's own model code). Each runtime's rules live in
their own module (`check_vllm`, `check_peft`, and `check` for llama.cpp); they read the adapter
through `AdapterFiles`, once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lorakit.adapters.config import check_peft_types
from lorakit.adapters.io import PREFIX, read_adapter_weights, read_config_json

# the tensor names a LoRA factor has in a PEFT file: module + "." + one of these
FACTOR_SUFFIXES = ("lora_A.weight", "lora_B.weight", "lora_embedding_A", "lora_embedding_B")


@dataclass(frozen=True)
class Finding:
    """One thing `runtime` does with the adapter that its trainer did not mean: `what` in the
    adapter, `why` (with the upstream source), `fix`. ``refused=False``: a note, not a refusal."""

    runtime: str
    what: str
    why: str
    fix: str = ""
    refused: bool = True

    def line(self) -> str:
        """The finding as one printed line."""
        kind = "refused" if self.refused else "note"
        return f"{self.runtime}: {kind}: {self.what}: {self.why}" + (f"; {self.fix}" if self.fix else "")


def format_findings(findings: list[Finding], runtimes: list[str]) -> list[str]:
    """Per runtime: one line per finding, or ``RUNTIME: ok`` after its notes when it refuses nothing."""
    lines = []
    for runtime in runtimes:
        own = [f for f in findings if f.runtime == runtime]
        lines += [f.line() for f in own]
        if not any(f.refused for f in own):
            lines.append(f"{runtime}: ok (nothing refused)")
    return lines


@dataclass
class AdapterFiles:
    """An adapter folder as the rules see it: its config dict and each tensor's shape."""

    dir: Path
    config: dict
    shapes: dict[str, tuple[int, ...]]

    @property
    def cfg_file(self) -> Path:
        return self.dir / "adapter_config.json"

    @property
    def weights_file(self) -> Path:
        return self.dir / "adapter_model.safetensors"

    def factors(self) -> dict[str, dict[str, tuple[int, ...]]]:
        """module -> {factor suffix: shape} for every LoRA factor tensor (other tensors left out)."""
        out: dict[str, dict[str, tuple[int, ...]]] = {}
        for key, shape in self.shapes.items():
            module, suffix = split_key(key)
            if suffix in FACTOR_SUFFIXES:
                out.setdefault(module, {})[suffix] = shape
        return out

    def ranks(self) -> dict[str, int]:
        """module -> its rank, read from its A factor ([r, in]; the embedding's [r, vocab])."""
        out = {}
        for module, parts in self.factors().items():
            a = parts.get("lora_A.weight") or parts.get("lora_embedding_A")
            if a:
                out[module] = a[0]
        return out


def split_key(key: str) -> tuple[str, str]:
    """A PEFT tensor key -> (module, rest): ``base_model.model.m.q_proj.lora_A.weight`` ->
    (``m.q_proj``, ``lora_A.weight``); a key that is no factor splits at its last dot."""
    name = key[len(PREFIX):] if key.startswith(PREFIX) else key
    for suffix in FACTOR_SUFFIXES:
        if name.endswith("." + suffix):
            return name[: -len(suffix) - 1], suffix
    module, _, rest = name.rpartition(".")
    return module, rest


def read_adapter_files(adapter_dir: str | os.PathLike) -> AdapterFiles:
    """Read `adapter_dir`'s config and tensor shapes; a missing or broken file is a one-line error."""
    adapter_dir = Path(adapter_dir)
    cfg_file = adapter_dir / "adapter_config.json"
    config = read_config_json(adapter_dir)
    check_peft_types(config, str(cfg_file))  # a rank of "8" or 8.5 is refused in one line, as on load
    shapes = {key: tuple(t.shape) for key, t in read_adapter_weights(adapter_dir).items()}
    return AdapterFiles(adapter_dir, config, shapes)
