"""The `lorakit` command line on a tiny model directory."""

from __future__ import annotations

from lorakit.cli import main


def test_inspect_prints_architecture_modules_and_table(tmp_path, tiny, capsys):
    tiny("gpt2").save_pretrained(tmp_path)
    assert main(["inspect", "--model", str(tmp_path), "--rank", "4", "--targets", "attention", "--dora"]) == 0
    out = capsys.readouterr().out
    assert "GPT2LMHeadModel (gpt2)" in out
    assert "c_attn x2" in out and "c_proj x2" in out and "c_fc" not in out
    assert "trainable params:" in out and "adapter size:" in out


def test_bad_targets_exit_2_with_one_line(tmp_path, tiny, capsys):
    tiny("llama").save_pretrained(tmp_path)
    assert main(["inspect", "--model", str(tmp_path), "--targets", "nothing_here"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "matched no module" in err[0]
