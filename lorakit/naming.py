"""Module names: PEFT's matching rule and the decoder-block index a name carries.

Matching follows PEFT so a saved `target_modules` means the same thing in both: a list
matches a module whose name equals an entry or ends with ``"." + entry``; a string is a
regex that must match the whole module name.
"""

from __future__ import annotations

import re

# decoder-block containers whose index `layers_to_transform` refers to
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")


def name_matches(name: str, targets: list[str] | str) -> bool:
    """PEFT's rule: suffix match for a list, full regex match for a string."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def layer_index(name: str) -> int | None:
    """Index of the decoder block a module lives in (``model.layers.3.mlp`` -> 3), if any."""
    m = _LAYER_INDEX.search(name)
    return int(m.group(1)) if m else None
