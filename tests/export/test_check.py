"""`lorakit export --check`: each runtime rule fires on an adapter that breaks it and on no other.

Adapters are built with lorakit's own API (or PEFT's, for per-module ranks) and then, where a
rule is about something lorakit never writes (a bias, an unknown config key), edited on disk.
The PEFT rules are shown to be real by loading the same folder with the installed PEFT.
"""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorakit.adapters import LoraConfig, add_adapter, save_adapter
from lorakit.cli import main
from lorakit.errors import LorakitError
from lorakit.export.check import check_adapter
from lorakit.export.check_peft import check_peft, installed_peft
from lorakit.export.findings import read_adapter_files
from tests.conftest import tiny_model
from tests.train.conftest import save_tiny_llama, write_dataset

ROOT = Path(__file__).resolve().parents[2]


def _adapter(tmp_path: Path, arch: str = "llama", name: str = "ad", **lora) -> tuple[Path, object]:
    """An adapter saved by lorakit on a tiny `arch` model: (folder, the model's config)."""
    model = tiny_model(arch)
    add_adapter(model, LoraConfig(**{"r": 4, "target_modules": ["q_proj", "v_proj"], **lora}))
    return save_adapter(model, tmp_path / name), model.config


def _edit_config(folder: Path, **changes) -> Path:
    """Set (or, for None, remove) keys of the adapter's config on disk."""
    path = folder / "adapter_config.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))
    return folder


def _refused(findings, runtime: str) -> list:
    return [f for f in findings if f.refused and f.runtime == runtime]


def _notes(findings, runtime: str) -> list:
    return [f for f in findings if not f.refused and f.runtime == runtime]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_plain_lora_adapter_is_refused_by_no_runtime(arch, tmp_path):
    from peft import PeftModel

    folder, config = _adapter(tmp_path, arch, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"])
    findings = check_adapter(folder, "all", config=config)
    assert [f for f in findings if f.refused] == []
    assert all(f.runtime in ("vllm", "llama.cpp", "peft") for f in findings)
    with warnings.catch_warnings(record=True) as caught:  # PEFT knows every key lorakit writes
        warnings.simplefilter("always")
        PeftModel.from_pretrained(tiny_model(arch), folder)
    assert not [w for w in caught if "Unexpected keyword" in str(w.message)]


# --- vLLM -------------------------------------------------------------------------------------


def test_dora_is_refused_by_vllm_and_llama_cpp_once_each(tmp_path):
    folder, config = _adapter(tmp_path, use_dora=True)
    findings = check_adapter(folder, "all", config=config)
    vllm = _refused(findings, "vllm")
    assert [f.what for f in vllm] == ["use_dora=true"]  # its magnitude tensors are not reported again
    assert "peft_helper.py" in vllm[0].why and "lorakit merge" in vllm[0].fix
    assert [f.what for f in _refused(findings, "llama.cpp")] == ["use_dora"]
    assert _refused(findings, "peft") == []


def test_modules_to_save_are_refused_by_vllm_even_for_the_head(tmp_path):
    folder, config = _adapter(tmp_path, modules_to_save=["lm_head"])
    vllm = _refused(check_adapter(folder, "vllm", config=config), "vllm")
    assert len(vllm) == 1 and vllm[0].what.startswith("modules_to_save")  # the saved tensors: not again


def test_a_trained_bias_is_refused_by_vllm(tmp_path):
    folder, config = _adapter(tmp_path)
    _edit_config(folder, bias="all")  # lorakit never trains one: the file is edited
    vllm = _refused(check_adapter(folder, "vllm", config=config), "vllm")
    assert [f.what for f in vllm] == ["bias='all'"]


def test_a_tensor_that_is_no_lora_factor_is_refused_by_vllm_and_llama_cpp(tmp_path):
    folder, config = _adapter(tmp_path)
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias"  # PEFT's lora_bias tensor
    tensors[key] = torch.zeros(32)
    save_file(tensors, weights)
    findings = check_adapter(folder, "all", config=config)
    vllm = _refused(findings, "vllm")
    assert len(vllm) == 1 and key in vllm[0].what and "unsupported LoRA weight" in vllm[0].why
    llama = _refused(findings, "llama.cpp")
    assert len(llama) == 1 and key in llama[0].why


def test_a_rank_above_vllms_max_lora_rank_is_refused_until_the_server_allows_it(tmp_path):
    folder, config = _adapter(tmp_path, r=32)
    default = _refused(check_adapter(folder, "vllm", config=config), "vllm")
    assert [f.what for f in default] == ["rank 32"] and "--max-lora-rank 32" in default[0].fix
    assert _refused(check_adapter(folder, "vllm", config=config, max_lora_rank=32), "vllm") == []
    assert _refused(check_adapter(folder, "vllm", config=config, max_lora_rank=64), "vllm") == []
    _edit_config(folder, r=1024)  # past every value vLLM accepts
    over = _refused(check_adapter(folder, "vllm", config=config, max_lora_rank=512), "vllm")
    assert [f.what for f in over] == ["rank 1024"] and "retrain" in over[0].fix


def test_a_max_lora_rank_vllm_does_not_accept_is_an_error(tmp_path):
    folder, config = _adapter(tmp_path)
    with pytest.raises(LorakitError, match="vLLM accepts only 1, 8, 16") as err:
        check_adapter(folder, "vllm", config=config, max_lora_rank=24)
    assert "\n" not in str(err.value)


def test_per_module_ranks_and_alphas_are_refused_by_vllm_which_scales_all_modules_alike(tmp_path):
    """vLLM drops rank_pattern/alpha_pattern and scales every module by lora_alpha/r; the modules
    PEFT scales otherwise are named, and a pattern's larger rank meets --max-lora-rank too."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    model = tiny_model("llama")
    peft_model = get_peft_model(model, PeftLoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"down_proj": 32}, alpha_pattern={"v_proj": 3}))
    peft_model.save_pretrained(tmp_path / "ad")
    findings = check_adapter(tmp_path / "ad", "all", config=model.config)
    whats = [f.what for f in _refused(findings, "vllm")]
    assert "rank 32" in whats
    (scale,) = [w for w in whats if w.startswith("rank_pattern/alpha_pattern")]
    assert "and 3 more" in scale  # two down_proj (rank) and two v_proj (alpha) modules; q_proj matches
    # lorakit export keeps each module's scale, so llama.cpp only notes the converter's behaviour
    assert _refused(findings, "llama.cpp") == []
    assert [f.what for f in _notes(findings, "llama.cpp")] == ["rank_pattern/alpha_pattern"]


def test_an_embedding_or_head_is_a_vllm_note_and_a_vocabulary_mismatch_is_refused(tmp_path):
    folder, config = _adapter(tmp_path, "qwen2", target_modules=["q_proj", "embed_tokens", "lm_head"])
    findings = check_adapter(folder, "vllm", config=config)
    assert _refused(findings, "vllm") == []
    assert sorted(f.what for f in _notes(findings, "vllm")) == ["module 'lm_head'", "module 'model.embed_tokens'"]
    other = copy.deepcopy(config)
    other.vocab_size = config.vocab_size + 8
    refused = _refused(check_adapter(folder, "vllm", config=other), "vllm")
    assert [f.what for f in refused] == ["module 'model.embed_tokens'"] and "vocabulary" in refused[0].why


# --- llama.cpp --------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["lm_head", "embed_tokens"])
def test_an_adapter_on_a_tied_head_or_embedding_is_refused_by_llama_cpp(target, tmp_path):
    folder, config = _adapter(tmp_path, "llama", target_modules=["q_proj", target])
    assert config.tie_word_embeddings
    refused = _refused(check_adapter(folder, "llama.cpp", config=config), "llama.cpp")
    assert len(refused) == 1 and target in refused[0].what and "--merged" in refused[0].fix
    untied, untied_config = _adapter(tmp_path, "qwen2", "untied", target_modules=["q_proj", target])
    assert not untied_config.tie_word_embeddings
    assert _refused(check_adapter(untied, "llama.cpp", config=untied_config), "llama.cpp") == []


def test_llama_cpp_reports_every_config_refusal_not_only_the_first(tmp_path):
    folder, config = _adapter(tmp_path, use_dora=True, modules_to_save=["lm_head"])
    whats = [f.what for f in _refused(check_adapter(folder, "llama.cpp", config=config), "llama.cpp")]
    assert whats == ["use_dora", "modules_to_save"]


def test_a_base_llama_cpp_has_no_architecture_for_is_refused(tmp_path):
    folder, _ = _adapter(tmp_path)
    refused = _refused(check_adapter(folder, "llama.cpp", config=tiny_model("distilbert").config), "llama.cpp")
    assert [f.what for f in refused] == ["base model"] and "no llama.cpp architecture" in refused[0].why


def test_without_a_base_llama_cpp_says_what_it_could_not_check(tmp_path):
    folder, _ = _adapter(tmp_path, target_modules=["q_proj", "embed_tokens"])  # tied: refused with the base
    findings = check_adapter(folder, "llama.cpp")
    assert _refused(findings, "llama.cpp") == []
    assert [f.what for f in _notes(findings, "llama.cpp")] == ["base model"]


# --- PEFT -------------------------------------------------------------------------------------


def test_a_config_key_the_installed_peft_does_not_know_is_reported_and_peft_drops_it(tmp_path):
    from peft import PeftConfig

    folder, _ = _adapter(tmp_path)
    _edit_config(folder, lorakit_future_option=True, lorakit_future_off=False)
    refused = _refused(check_adapter(folder, "peft"), "peft")
    assert [f.what for f in refused] == ["config keys ['lorakit_future_option']"]  # an "off" key does no harm
    with pytest.warns(UserWarning, match="Unexpected keyword arguments"):
        loaded = PeftConfig.from_pretrained(str(folder))
    assert not hasattr(loaded, "lorakit_future_option")


@pytest.mark.parametrize("peft_type", [None, "NOT_A_PEFT_TYPE"])
def test_a_missing_or_unknown_peft_type_is_refused_as_peft_refuses_it(peft_type, tmp_path):
    from peft import PeftModel

    folder, _ = _adapter(tmp_path)
    _edit_config(folder, peft_type=peft_type)
    assert [f.what.split(" ")[0] for f in _refused(check_adapter(folder, "peft"), "peft")] == ["peft_type"]
    with pytest.raises(KeyError):
        PeftModel.from_pretrained(tiny_model("llama"), folder)


def test_layers_to_transform_with_a_regex_target_is_refused_as_peft_refuses_it(tmp_path):
    from peft import LoraConfig as PeftLoraConfig

    folder, _ = _adapter(tmp_path, layers_to_transform=[0])
    assert _refused(check_adapter(folder, "peft"), "peft") == []  # a list of names: fine
    _edit_config(folder, target_modules=r".*\.0\.self_attn\.(q_proj|v_proj)")
    assert [f.what for f in _refused(check_adapter(folder, "peft"), "peft")] == [
        "layers_to_transform with a regex target_modules"]
    with pytest.raises(ValueError, match="layers_to_transform"):
        PeftLoraConfig.from_pretrained(str(folder))


def test_a_peft_whose_source_cannot_be_read_is_a_note_not_a_refusal(tmp_path):
    folder, _ = _adapter(tmp_path)
    findings = check_peft(read_adapter_files(folder), installed=(tmp_path / "no-peft-here", "0.0"))
    assert findings and _refused(findings, "peft") == []
    assert installed_peft() is not None  # the dev install: the real checks above ran against it


def test_checking_never_imports_peft(tmp_path):
    folder, _ = _adapter(tmp_path)
    code = ("import sys; from lorakit.export.check import check_adapter; "
            f"check_adapter({str(folder)!r}, 'all'); assert 'peft' not in sys.modules, 'peft imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)


# --- the CLI and lorakit train ----------------------------------------------------------------


def test_cli_prints_one_line_per_finding_and_exits_1_when_something_is_refused(tmp_path, capsys):
    clean, _ = _adapter(tmp_path, name="clean")
    assert main(["export", "--check", "vllm", str(clean)]) == 0
    assert capsys.readouterr().out.splitlines() == ["vllm: ok (nothing refused)"]
    dora, _ = _adapter(tmp_path, name="dora", use_dora=True, r=32)
    assert main(["export", "--check", "all", "--adapter", str(dora)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines if ": refused:" in line] == ["vllm", "vllm", "llama.cpp"]
    assert lines[-1] == "peft: ok (nothing refused)"
    r32, _ = _adapter(tmp_path, name="r32", r=32)
    assert main(["export", "--check", "vllm", str(r32)]) == 1
    assert main(["export", "--check", "vllm", str(r32), "--max-lora-rank", "32"]) == 0


def test_cli_export_still_needs_adapter_and_out_and_check_writes_nothing(tmp_path, capsys):
    folder, _ = _adapter(tmp_path)
    assert main(["export", "--adapter", str(folder)]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["export", "--check", "vllm", str(folder), "--out", str(tmp_path / "x.gguf")]) == 2
    with pytest.raises(SystemExit) as exited:  # argparse's choices, in one line
        main(["export", "--check", "nope", str(folder)])
    assert exited.value.code == 2
    assert not list(tmp_path.glob("*.gguf"))
    capsys.readouterr()
    _edit_config(folder, r="8")  # a broken adapter: one line naming the file, exit 2
    assert main(["export", "--check", "all", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "adapter_config.json" in err and len(err.strip().splitlines()) == 1


def test_train_warns_what_vllm_and_llama_cpp_refuse_in_the_adapter_it_saved(tmp_path, caplog):
    base = save_tiny_llama(tmp_path / "base")
    data = write_dataset(tmp_path / "data", n_train=8, n_valid=0)
    caplog.set_level(logging.WARNING, logger="lorakit")
    assert main(["train", "--model", str(base), "--data", str(data), "--out", str(tmp_path / "run"), "--method",
                 "dora", "--rank", "4", "--max-steps", "1", "--max-seq-len", "64", "--no-progress",
                 "--threads", "1"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("vllm: refused: use_dora=true" in m for m in warned), warned
    assert any("llama.cpp: refused: use_dora" in m for m in warned)
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()


def test_cli_reads_the_base_from_model_and_says_when_it_cannot(tmp_path, capsys):
    folder, _ = _adapter(tmp_path, target_modules=["q_proj", "embed_tokens"])
    base = save_tiny_llama(tmp_path / "base")  # ties its embedding to the head, as tiny_model's llama
    assert main(["export", "--check", "llama.cpp", str(folder)]) == 0  # no base: a note, nothing refused
    assert "llama.cpp: note: base model" in capsys.readouterr().out
    assert main(["export", "--check", "llama.cpp", str(folder), "--model", str(base)]) == 1
    assert "llama.cpp: refused: module 'model.embed_tokens'" in capsys.readouterr().out
    assert main(["export", "--check", "llama.cpp", str(folder), "--model", str(tmp_path / "missing")]) == 0
    assert "note: base model" in capsys.readouterr().out.splitlines()[0]
