"""Fuzzing resumable checkpoints with hypothesis: corrupt, truncated or wrong-typed files, bad `latest`.

Property: resuming either restores the checkpoint or raises one line naming the file and what
to do instead (an earlier complete checkpoint when there is one, else a fresh start); a failed
resume leaves the model, the optimizer, the RNG and the files exactly as they were.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from lorakit.adapters import LoraConfig, add_adapter
from lorakit.errors import LorakitError
from lorakit.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from lorakit.train.schedule import make_scheduler
from tests.conftest import tiny_model
from tests.test_fuzz_inputs import FUZZ, check_refusal, json_values

FILES = ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer_state.json")
STATE_KEYS = ("config", "batches", "tokens", "step", "optimizer", "scheduler", "python_rng", "best_eval")
FINGERPRINT = {"rank": 4, "method": "lora"}
_TEMPLATE: dict[str, Path] = {}


def trainer():
    """A tiny llama with a q_proj LoRA, its AdamW and schedule: what `lorakit train` resumes into."""
    model = tiny_model("llama")
    add_adapter(model, LoraConfig(r=4, target_modules=["q_proj"]))
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return model, optimizer, make_scheduler(optimizer, "cosine", 2, 10)


def template() -> Path:
    """checkpoints/ with step-000001 and step-000002 (latest), made once and copied per example."""
    if "dir" not in _TEMPLATE:
        root = Path(tempfile.mkdtemp(prefix="fuzz-ckpt-")) / "checkpoints"
        model, optimizer, scheduler = trainer()
        for step in (1, 2):
            model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
            optimizer.step(), scheduler.step()
            save_checkpoint(root, step, model, optimizer, scheduler,
                            {"config": FINGERPRINT, "batches": {"epoch": 0, "index": step}, "tokens": 3 * step})
        _TEMPLATE["dir"] = root
    return _TEMPLATE["dir"]


def _resume(root: Path):
    model, optimizer, scheduler = trainer()
    before = ({k: v.clone() for k, v in model.state_dict().items()}, json.dumps(optimizer.state_dict(), default=str),
              torch.get_rng_state().clone(), random.getstate())

    def resume():
        path = latest_checkpoint(root)
        return None if path is None else load_checkpoint(path, model, optimizer, scheduler, FINGERPRINT)

    result = check_refusal(resume, str(root), root)
    if isinstance(result, LorakitError):
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in before[0].items()), "a failed resume changed the model"
        assert json.dumps(optimizer.state_dict(), default=str) == before[1], "a failed resume changed the optimizer"
        assert torch.equal(torch.get_rng_state(), before[2]) and random.getstate() == before[3], "changed the RNG"
    return result


@st.composite
def spoil(draw):
    """(file, how) for one of step-000002's files or latest.json, and the spoiling itself as a function."""
    target = draw(st.sampled_from(FILES + ("latest.json",)))
    how = draw(st.sampled_from(["truncate", "bytes", "flip", "json"]))
    cut, junk, flip = draw(st.floats(0, 1)), draw(st.binary(max_size=64)), draw(st.integers(0, 10**6))
    key, value = draw(st.sampled_from(STATE_KEYS + ("checkpoint",))), draw(json_values(STATE_KEYS))
    drop = draw(st.booleans())

    def apply(root: Path) -> None:
        path = root / target if target == "latest.json" else root / "step-000002" / target
        data = path.read_bytes()
        if how == "truncate":
            path.write_bytes(data[:int(len(data) * cut)])
        elif how == "bytes":
            path.write_bytes(junk)
        elif how == "flip":
            i = flip % len(data)
            path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
        elif path.suffix == ".json":
            obj = json.loads(data)
            obj.pop(key, None) if drop else obj.__setitem__(key, value)
            path.write_text(json.dumps(obj))

    return target, how, apply


@FUZZ
@given(spoil())
def test_a_spoiled_checkpoint_resumes_or_says_in_one_line_how_to_go_on(case):
    target, how, apply = case
    with tempfile.TemporaryDirectory() as tmp:
        root = shutil.copytree(template(), Path(tmp) / "checkpoints")
        apply(root)
        result = _resume(root)
        if isinstance(result, LorakitError):  # the newest complete checkpoint left is the one to name
            message = str(result)
            complete = "step-000002" if target == "latest.json" else "step-000001"
            assert f"--resume {root / complete}" in message or "was trained with" in message, message


@pytest.mark.parametrize("name", FILES)
def test_a_truncated_file_names_itself_and_the_earlier_checkpoint(tmp_path, name):
    root = shutil.copytree(template(), tmp_path / "checkpoints")
    path = root / "step-000002" / name
    path.write_bytes(path.read_bytes()[:20])
    result = _resume(root)
    assert isinstance(result, LorakitError) and str(path) in str(result)
    assert f"--resume {root / 'step-000001'}" in str(result), str(result)


def test_latest_pointing_to_a_missing_directory_names_the_earlier_one(tmp_path):
    root = shutil.copytree(template(), tmp_path / "checkpoints")
    shutil.rmtree(root / "step-000002")
    with pytest.raises(LorakitError, match=r"latest.json: names step-000002, which does not exist; .*step-000001"):
        latest_checkpoint(root)


def test_the_only_checkpoint_corrupt_says_to_start_fresh(tmp_path):
    root = shutil.copytree(template(), tmp_path / "checkpoints")
    shutil.rmtree(root / "step-000001")
    (root / "step-000002" / "trainer_state.json").write_text("{")
    result = _resume(root)
    assert isinstance(result, LorakitError) and "start fresh" in str(result), str(result)


def test_a_step_that_disagrees_with_the_directory_is_refused(tmp_path):
    root = shutil.copytree(template(), tmp_path / "checkpoints")
    state_file = root / "step-000002" / "trainer_state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "step": 7}))
    result = _resume(root)
    assert isinstance(result, LorakitError) and "step 7" in str(result), str(result)


def test_optimizer_moments_of_the_wrong_shape_are_refused(tmp_path):
    """They would load and then fail (or broadcast) at the first step of the resumed run."""
    root = shutil.copytree(template(), tmp_path / "checkpoints")
    path = root / "step-000002" / "optimizer.safetensors"
    tensors = load_file(path)
    key = sorted(k for k in tensors if k.endswith("exp_avg"))[0]
    tensors[key] = torch.zeros(3)
    save_file(tensors, path)
    result = _resume(root)
    assert isinstance(result, LorakitError) and key in str(result), str(result)
