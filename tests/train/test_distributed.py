"""Two gloo processes under torchrun give the same adapter as one process at the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file

from tests.train.conftest import write_dataset


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_two_process_ddp_matches_single_process(tiny_model_dir, tmp_path):
    data = write_dataset(tmp_path / "data", n_train=64)
    common = ["--model", str(tiny_model_dir), "--data", str(data), "--max-steps", "4", "--lr", "5e-3",
              "--no-progress", "--threads", "1", "--packing", "--max-seq-len", "128",
              "--precision", "fp32"]  # the 1e-6 bound below is for fp32 sums in another order
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    result = subprocess.run([sys.executable, "-m", "lorakit", "train", *common, "--batch-size", "4", "--out",
                             str(single)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", _free_port()]
    result = subprocess.run([*torchrun, "-m", "lorakit", "train", *common, "--batch-size", "2", "--out", str(ddp)],
                            env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    a = load_file(single / "adapter_model.safetensors")
    b = load_file(ddp / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max() <= 1e-6, k
    moved = max((a[k] != 0).any().item() for k in a if "lora_B" in k)
    assert moved, "training did not change the adapter"
