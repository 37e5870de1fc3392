"""Peak memory as the benchmarks and `lorakit compare` measure it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lorakit.runtime.memory import peak_rss_mb, rss_mb

CHILD = "from lorakit.runtime.memory import peak_rss_mb; print(peak_rss_mb())"


def test_peak_is_at_least_the_current_size():
    assert peak_rss_mb() >= rss_mb() * 0.99  # rss_mb reads a moment later; pages come and go


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss inherits the parent's size on Linux")
def test_a_fresh_process_reports_its_own_peak_not_its_parents():
    """A child started while the parent holds 400 MB must not report those 400 MB (ru_maxrss does)."""
    held = bytearray(400 * 2**20)
    held[::4096] = b"\x01" * len(held[::4096])  # touch every page so it is resident
    assert rss_mb() > 400
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 300, out.stdout  # python + torch import stays well under the parent's hold
    del held
