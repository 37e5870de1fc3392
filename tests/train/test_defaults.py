"""Fast by default: what `lorakit train` decides when packing, completion-only loss and precision are
left at auto, that it says so with the flag that turns each off, and that a setting the user gives wins."""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml

from lorakit.data.schema import Sample
from lorakit.errors import LorakitError
from lorakit.runtime.cache import measured_once
from lorakit.runtime.precision import resolve_precision
from lorakit.train.batches import packed_rows
from lorakit.train.config import TrainConfig
from lorakit.train.defaults import PACKING_GAIN, choose_mask_prompt, choose_packing, resolve_data_defaults
from tests.train.conftest import write_dataset


def _samples(lengths, prompt_len=0):
    return [Sample(list(range(3, 3 + n)), prompt_len) for n in lengths]


@pytest.mark.parametrize("seed", range(4))
def test_packing_is_on_exactly_when_it_needs_enough_fewer_rows(seed):
    rng = random.Random(seed)
    row_len = 128
    top = [16, 64, 120, 128][seed]  # short samples pack well, samples near the row length do not
    samples = _samples(rng.randint(8, top) for _ in range(200))
    choice = choose_packing(samples, row_len)
    rows = packed_rows(samples, row_len)
    assert sorted(id(s) for row in rows for s in row) == sorted(id(s) for s in samples)  # each sample once
    assert all(sum(len(s.ids) for s in row) <= row_len for row in rows)
    assert choice.value is (len(rows) <= (1 - PACKING_GAIN) * len(samples))
    assert choice.flag == ("--no-packing to turn off" if choice.value else "--packing to force")


def test_short_samples_are_packed_and_full_length_ones_are_not():
    assert choose_packing(_samples([20] * 50), 128).value is True
    assert choose_packing(_samples([128] * 50), 128).value is False
    assert choose_packing(_samples([100, 28] * 25), 128).value is True  # pairs fill a row exactly
    assert choose_packing(_samples([65] * 50), 128).value is False  # no two fit in a row


def test_completion_only_loss_is_on_when_samples_have_prompts():
    on = choose_mask_prompt(_samples([10, 10], prompt_len=3) + _samples([10]))
    assert on.value is True and "--no-mask-prompt" in on.flag and "2 of 3" in on.why
    assert choose_mask_prompt(_samples([10, 10])).value is False


def test_settings_the_user_gives_are_kept_and_not_reported():
    samples = _samples([20] * 50, prompt_len=3)
    cfg, choices = resolve_data_defaults(TrainConfig(packing=False, mask_prompt=False, max_seq_len=128), samples)
    assert (cfg.packing, cfg.mask_prompt, choices) == (False, False, [])
    cfg, choices = resolve_data_defaults(TrainConfig(max_seq_len=128), samples)
    assert (cfg.packing, cfg.mask_prompt) == (True, True) and [c.setting for c in choices] == ["packing", "mask_prompt"]


def test_auto_is_accepted_from_yaml_and_other_values_are_refused(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("packing: auto\nmask_prompt: true\n")
    cfg = TrainConfig.resolve(str(good), {})
    assert cfg.packing is None and cfg.mask_prompt is True
    bad = tmp_path / "bad.yaml"
    bad.write_text("packing: maybe\n")
    with pytest.raises(LorakitError, match=r"bad.yaml: setting 'packing' must be true, false or auto"):
        TrainConfig.resolve(str(bad), {})


def test_train_with_no_speed_flags_runs_the_defaults_and_says_what_they_chose(tiny_model_dir, tmp_path, capsys):
    from lorakit.cli import main

    data = write_dataset(tmp_path / "data", n_train=32)  # short samples with prompts
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), "--max-steps", "2",
                 "--max-seq-len", "128", "--no-progress", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    chosen = {c["setting"]: c["value"] for c in summary["defaults"]}
    expected_precision = resolve_precision("auto", torch.device("cpu"), int8=True)  # LoRA can run int8
    assert chosen == {"precision": expected_precision, "packing": True, "mask_prompt": True}
    assert "default packing: True" in printed and "--no-packing to turn off" in printed
    assert "--no-mask-prompt" in printed
    resolved = yaml.safe_load((out / "train_config.yaml").read_text())  # the resolved values, not "auto"
    assert resolved["packing"] is True and resolved["mask_prompt"] is True
    assert resolved["speed_plan"]["precision"] == expected_precision
    # a flag given turns its default off, and nothing is reported for it
    out2 = tmp_path / "run2"
    assert main(["train", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out2), "--max-steps", "1",
                 "--max-seq-len", "128", "--no-progress", "--threads", "1", "--no-packing", "--precision", "fp32"]) == 0
    summary = json.loads((out2 / "summary.json").read_text())
    assert [c["setting"] for c in summary["defaults"]] == ["mask_prompt"]
    assert yaml.safe_load((out2 / "train_config.yaml").read_text())["packing"] is False


def test_a_machine_fact_is_measured_once_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path))
    calls = []

    def probe():
        calls.append(1)
        return True

    assert measured_once("fact", probe) is True and measured_once("fact", probe) is True
    assert len(calls) == 1
    stored = json.loads((tmp_path / "machine.json").read_text())
    assert [entry["fact"] for entry in stored.values()] == [True]  # under this machine's key
    (tmp_path / "machine.json").write_text('{"torn')  # a broken cache file: measured again, rewritten
    assert measured_once("fact", lambda: False) is False
    assert measured_once("fact", probe) is False and len(calls) == 1
