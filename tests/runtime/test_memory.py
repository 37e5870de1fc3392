"""own_weights moves weights out of the file mapping without changing a value or untying a tie."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest
import torch

from lorakit.models import load_model
from lorakit.runtime.memory import file_backed, own_weights, release_free_heap
from tests.train.conftest import tiny_model_dir  # noqa: F401  (fixture)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_own_weights_copies_file_backed_weights_and_keeps_values_and_ties(tiny_model_dir):  # noqa: F811
    model, _ = load_model(tiny_model_dir, with_tokenizer=False)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        before = model(ids).logits
    assert any(file_backed(p) for p in model.parameters())  # transformers maps the safetensors file
    assert own_weights(model) > 0
    assert not any(file_backed(t) for t in [*model.parameters(), *model.buffers()])
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    release_free_heap()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    assert own_weights(model) == 0  # nothing left to copy


_STEADY_PROBE = """
import resource, sys, torch
from lorakit.runtime.memory import steady_malloc
def faults_of_a_fresh_buffer():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(64 << 18)  # 64 MiB: above glibc's own mmap ceiling, so mapped afresh each time by default
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    del t
    return after - before
faults_of_a_fresh_buffer()
default = faults_of_a_fresh_buffer()
if not steady_malloc():
    sys.exit(3)
faults_of_a_fresh_buffer()
print(default, faults_of_a_fresh_buffer())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_steady_malloc_reuses_freed_pages_where_the_default_maps_them_afresh():
    """In a fresh process (the setting is process-wide): a 64 MiB buffer faults in every page each time
    by default, and after `steady_malloc` the second one reuses the first one's pages."""
    done = subprocess.run([sys.executable, "-c", _STEADY_PROBE], capture_output=True, text=True, timeout=120)
    if done.returncode == 3:
        pytest.skip("no glibc mallopt")
    assert done.returncode == 0, done.stderr
    default, steady = map(int, done.stdout.split())
    pages = (64 << 20) // resource.getpagesize()
    assert default > pages // 2  # mapped afresh: (nearly) every page faults
    assert steady < pages // 20
