"""What the PEFT installed here would refuse, or silently drop, when it loads the adapter.

lorakit never imports peft: the config fields and adapter types this PEFT knows are read from
its source files (found with `importlib.util.find_spec`, which runs nothing) and the rules are
those of its loader:

* peft/config.py `PeftConfig.from_peft_type`: the adapter class is looked up by `peft_type`
  (a type this PEFT lacks fails the load; a config without one is refused, as
  `MIN_EXPECTED_CONFIG_KEYS` and `_get_peft_type` say), and a key the class does not take is
  dropped with a warning ("Unexpected keyword arguments ... these are ignored");
* peft/tuners/lora/config.py `LoraConfig.__post_init__`: "`layers_to_transform` cannot be used
  when `target_modules` is a str".
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
from pathlib import Path

from lorakit.export.findings import AdapterFiles, Finding

RUNTIME = "peft"
# (file under the peft package, class) whose dataclass fields LoraConfig(**adapter_config) takes
_CONFIG_CLASSES = (("config.py", "PeftConfigMixin"), ("config.py", "PeftConfig"),
                   ("tuners/lora/config.py", "LoraConfig"))
# where PeftType is defined (peft/utils/peft_types.py; older releases: peft/utils/config.py)
_TYPE_FILES = ("utils/peft_types.py", "utils/config.py")


def installed_peft() -> tuple[Path, str] | None:
    """(package folder, version) of the PEFT installed here, found without importing it; None if absent."""
    try:
        spec = importlib.util.find_spec("peft")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        version = importlib.metadata.version("peft")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return Path(next(iter(spec.submodule_search_locations))), version


def _classes(path: Path) -> dict[str, ast.ClassDef]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return {}
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _init_fields(cls: ast.ClassDef) -> set[str]:
    """Dataclass fields of `cls` its __init__ takes (``field(init=False)`` ones are not)."""
    out = set()
    for stmt in cls.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        value = stmt.value
        if isinstance(value, ast.Call) and any(k.arg == "init" and isinstance(k.value, ast.Constant)
                                               and k.value.value is False for k in value.keywords):
            continue
        out.add(stmt.target.id)
    return out


def config_fields(pkg: Path) -> set[str] | None:
    """The adapter_config.json keys this PEFT's LoraConfig takes; None if its source is not as expected."""
    fields: set[str] = set()
    for rel, name in _CONFIG_CLASSES:
        cls = _classes(pkg / rel).get(name)
        if cls is None:
            return None
        fields |= _init_fields(cls)
    return fields


def peft_types(pkg: Path) -> set[str] | None:
    """The `peft_type` values this PEFT knows (members of its PeftType enum); None if not found."""
    for rel in _TYPE_FILES:
        cls = _classes(pkg / rel).get("PeftType")
        if cls is not None:
            return {stmt.value.value for stmt in cls.body if isinstance(stmt, ast.Assign)
                    and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)}
    return None


def check_peft(files: AdapterFiles, installed: tuple[Path, str] | None = None) -> list[Finding]:
    """Findings for loading `files` with PEFT (`installed`: its folder and version; default the one here)."""
    installed = installed or installed_peft()
    cfg, out = files.config, []
    # peft/tuners/lora/config.py LoraConfig.__post_init__ raises on this pair
    if isinstance(cfg.get("target_modules"), str) and cfg.get("layers_to_transform") is not None:
        out.append(Finding(RUNTIME, "layers_to_transform with a regex target_modules",
                           "PEFT refuses the pair (peft/tuners/lora/config.py LoraConfig.__post_init__)",
                           "re-save target_modules as a list of module names, or drop layers_to_transform "
                           "and name the layers in the regex"))
    if installed is None:
        out.append(Finding(RUNTIME, "installed PEFT", "no PEFT is installed here, so which config keys and "
                           "adapter types it knows was not checked", "pip install peft, then check again",
                           refused=False))
        return out
    pkg, version = installed
    if "peft_type" not in cfg:  # peft/config.py: MIN_EXPECTED_CONFIG_KEYS, PeftConfig._get_peft_type
        out.append(Finding(RUNTIME, "peft_type", "missing; PEFT picks the adapter class by it "
                           "(peft/config.py PeftConfig._get_peft_type)", "add \"peft_type\": \"LORA\""))
    else:
        known = peft_types(pkg)
        if known is None:
            out.append(Finding(RUNTIME, "peft_type", f"PeftType not found in PEFT {version}'s source at {pkg}; "
                               "not checked", refused=False))
        elif not isinstance(cfg["peft_type"], str) or cfg["peft_type"] not in known:
            out.append(Finding(RUNTIME, f"peft_type {cfg['peft_type']!r}", f"PEFT {version} has no such adapter "
                               "type (peft/config.py PeftConfig.from_peft_type)", "upgrade PEFT, or re-save it"))
    if str(cfg.get("peft_type", "LORA")) != "LORA":
        return out  # the keys below are LoraConfig's; another adapter type has its own
    fields = config_fields(pkg)
    if fields is None:
        out.append(Finding(RUNTIME, "config keys", f"LoraConfig not found in PEFT {version}'s source at {pkg}; "
                           "not checked", refused=False))
        return out
    # a key PEFT drops does no harm when it only restates "off" (None, false, empty)
    dropped = sorted(k for k, v in cfg.items() if k not in fields and v not in (None, False, 0, "", [], {}))
    if dropped:
        out.append(Finding(RUNTIME, f"config keys {dropped}", f"PEFT {version} does not know them and drops them "
                           "with a warning, loading the adapter without what they set "
                           "(peft/config.py PeftConfig.from_peft_type)", "upgrade PEFT to a release that has them"))
    return out
