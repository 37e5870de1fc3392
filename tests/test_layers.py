"""The package layering written in pyproject.toml ([tool.importlinter], README "Layout") holds:
each package imports only from layers below it, and no sibling packages or modules import each
other in a cycle. Checked by import-linter, on the source as it is."""

from __future__ import annotations

import logging
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept(capsys):
    from importlinter.cli import lint_imports

    cwd = os.getcwd()
    # import-linter configures logging with dictConfig, which disables every logger that exists
    # (lorakit's included, for the tests that run after this one): put them back as they were
    loggers = {name: lg.disabled for name, lg in logging.Logger.manager.loggerDict.items()
               if isinstance(lg, logging.Logger)}
    os.chdir(ROOT)  # import-linter reads pyproject.toml from the working directory
    try:
        status = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True)
    finally:
        os.chdir(cwd)
        for name, disabled in loggers.items():
            logging.getLogger(name).disabled = disabled
    assert status == 0, capsys.readouterr().out
