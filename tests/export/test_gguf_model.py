"""GGUF from a Hugging Face model (`lorakit.export.gguf_model`), proven by llama.cpp itself.

Tiny random-weight llama (tied head; and one with Llama 3 rope scaling), qwen2 (q/k/v biases,
untied) and gemma3 (sliding-window and global layers, q/k norms) models, with real tokenizers
(SmolLM2's byte-level BPE; Gemma's SentencePiece-style one), are written whole in f32. llama.cpp
then runs: the model alone; the model + lorakit's adapter GGUF; the merged GGUF that `lorakit
export --merged --model FOLDER` writes. Each gives lorakit's greedy tokens, and its logits differ
from lorakit's by no more than the base's own llama.cpp-vs-lorakit difference plus the worst-case
f32 rounding of the adapter's contribution (`tests.export.llama.rounding_bound`). The base's own
difference is held to that rounding bound of its logits' size too. LoRA, rsLoRA and a PEFT-written
rank/alpha pattern each.
"""

from __future__ import annotations

import pytest
import torch

from lorakit.adapters import LoraConfig, add_adapter, load_adapter, save_adapter
from lorakit.cli import main
from lorakit.errors import LorakitError
from lorakit.export.gguf_model import write_model_gguf
from tests.adapters.helpers import randomize_adapter
from tests.export.llama import (import_llama_cpp, llama, llama_greedy, llama_logits, lorakit_greedy, rounding_bound,
                                with_ggml_gelu)
from tests.export.tiny import ARCHS, tiny_config, tiny_folder_of, tokenizer_dir

PROMPT = ("Anna Karenina sat by the window and thought about the letter she had received from her brother, "
          "and of the 3 roads to Moscow.")
MERGED_ONLY = ("dora", "qlora")  # what an adapter GGUF cannot hold, and an adapter trained on a 4-bit base


@pytest.fixture(scope="module")
def llama_cpp():
    return import_llama_cpp()


@pytest.fixture(scope="module")
def tiny_folder(request, tmp_path_factory):
    """(arch, HF folder with a tiny random model and a real tokenizer, its f32 GGUF)."""
    arch = request.param
    folder, model = tiny_folder_of(arch, tmp_path_factory.mktemp(arch) / "model")
    gguf = write_model_gguf(folder.parent / "base.gguf", model.state_dict(), model.config, folder, outtype="f32")
    return arch, folder, gguf


def _lorakit(folder):
    from lorakit.models import load_model

    return load_model(str(folder))


def _ids(tok) -> torch.Tensor:
    return tok(PROMPT, return_tensors="pt")["input_ids"]


def _logits(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """lorakit's logits [T, vocab], and the same with llama.cpp's f16-table GELU (Gemma's MLPs;
    equal for SiLU models): llama.cpp is held to the second, the gap between the two is printed."""
    import copy

    with torch.no_grad():
        return model(ids).logits[0], with_ggml_gelu(copy.deepcopy(model))(ids).logits[0]


@pytest.mark.parametrize("tiny_folder", ARCHS, indirect=True)
def test_model_gguf_alone_gives_lorakit_outputs(tiny_folder, llama_cpp):
    arch, folder, gguf = tiny_folder
    model, tok = _lorakit(folder)
    ids = _ids(tok)
    ours, ggml_gelu = _logits(model, ids)
    llm = llama(llama_cpp, gguf)
    diff = (llama_logits(llm, ids[0].tolist()) - ggml_gelu).abs().max().item()
    bound = rounding_bound(ggml_gelu.abs().max().item(), model.config)
    print(f"{arch} model GGUF: max |logits llama.cpp - lorakit| {diff:.2e} (rounding bound {bound:.2e}; "
          f"llama.cpp's f16 GELU table alone moves lorakit's by {(ggml_gelu - ours).abs().max().item():.2e})")
    assert diff <= bound
    assert llama_greedy(llm, ids[0].tolist()) == lorakit_greedy(model, ids, None)


def _adapter(folder, out, variant: str):
    """A random adapter on the model in `folder`, saved at `out`, moving the logits by a few units;
    returns lorakit's adapted model. `variant`: lora, rslora, dora, qlora (LoRA on lorakit's NF4
    base), or rank_pattern (written by PEFT with per-module ranks and alphas, loaded into lorakit)."""
    from lorakit.quant.load import load_base_model

    model = _lorakit(folder)[0]
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    targets += ["embed_tokens", "lm_head"] if not model.config.tie_word_embeddings else []
    if variant == "rank_pattern":
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        peft_model = get_peft_model(model, PeftLoraConfig(
            r=8, lora_alpha=16, target_modules=targets, rank_pattern={"v_proj": 2, "down_proj": 12},
            alpha_pattern={"down_proj": 6}))
        torch.manual_seed(1)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn_like(p) * 0.1)
        peft_model.save_pretrained(out)
        net, _ = _lorakit(folder)
        load_adapter(net, out, "default")
        return net
    if variant == "qlora":
        model, _ = load_base_model(str(folder), "nf4", with_tokenizer=False)
    add_adapter(model, LoraConfig(r=8, alpha=16, use_rslora=variant == "rslora", use_dora=variant == "dora",
                                  target_modules=targets))
    randomize_adapter(model)
    save_adapter(model, out, base_model_name_or_path=str(folder))
    return model


# Gemma's 262k-token vocabulary makes its cases the slow ones: its names and layout are checked by
# LoRA in the everyday suite, the scalings (family-independent) by the other families
CASES = [(arch, variant) for arch in ARCHS for variant in ("lora", "rslora", "rank_pattern", *MERGED_ONLY)]


@pytest.mark.parametrize(("tiny_folder", "variant"), [
    pytest.param(arch, variant, marks=[pytest.mark.slow] if arch == "gemma3" and variant != "lora" else [],
                 id=f"{arch}-{variant}") for arch, variant in CASES], indirect=["tiny_folder"])
def test_adapter_and_merged_gguf_give_lorakit_outputs(tiny_folder, variant, llama_cpp, tmp_path):
    arch, folder, gguf = tiny_folder
    base, tok = _lorakit(folder)
    ids = _ids(tok)
    base_logits = _logits(base, ids)[1]
    net = _adapter(folder, tmp_path / "ad", variant)
    ours = _logits(net, ids)[1]
    effect = (ours - base_logits).abs().max().item()
    assert effect > 0.05 * base_logits.abs().max().item()  # the adapter matters to the comparison
    noise = (llama_logits(llama(llama_cpp, gguf), ids[0].tolist()) - base_logits).abs().max().item()
    bound = noise + rounding_bound(effect, net.config)
    expected = lorakit_greedy(net, ids, None)
    common = ["--adapter", str(tmp_path / "ad"), "--model", str(folder)]
    quantize = ["--quantize", "nf4"] if variant == "qlora" else []
    assert main(["export", *common, "--out", str(tmp_path / "m.gguf"), "--merged", "--outtype", "f32", *quantize]) == 0
    runs = [("merged", llama(llama_cpp, tmp_path / "m.gguf"))]
    if variant not in MERGED_ONLY:
        assert main(["export", *common, "--out", str(tmp_path / "ad.gguf")]) == 0
        runs.append(("adapter", llama(llama_cpp, gguf, tmp_path / "ad.gguf")))
    for kind, llm in runs:
        diff = (llama_logits(llm, ids[0].tolist()) - ours).abs().max().item()
        print(f"{arch} {variant} {kind} GGUF: max |logits llama.cpp - lorakit| {diff:.2e}, base noise {noise:.2e},"
              f" adapter effect {effect:.2f}, bound {bound:.2e}")
        assert diff <= bound, kind
        assert llama_greedy(llm, ids[0].tolist()) == expected, kind


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_llama_cpp_tokenizes_as_the_hugging_face_tokenizer(arch, llama_cpp, tmp_path):
    """The tokenizer metadata written from tokenizer.json: llama.cpp splits text into the ids the
    Hugging Face tokenizer gives (Gutenberg prose, digits, runs of spaces, newlines, added tokens)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = tokenizer_dir(arch)
    tok = AutoTokenizer.from_pretrained(str(source))
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tok)))
    path = write_model_gguf(tmp_path / "t.gguf", model.state_dict(), model.config, source, outtype="f16")
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    texts = [PROMPT, "“Well, Prince, so Genoa and Lucca are now just family estates of the Buonapartes.”",
             "In 1812, 600000 men\n\n  crossed   the Niemen;\tsome—perhaps 10%—returned.", "naïve café Ünter Straße",
             f"{tok.eos_token} and then {tok.bos_token or tok.eos_token}"]
    for text in texts:
        want = tok(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == want, text
    with_bos = llm.tokenize(b"Hello", add_bos=True)
    assert with_bos == tok("Hello")["input_ids"]


def test_unsupported_families_and_tokenizers_are_refused_before_writing(tmp_path):
    from tests.conftest import tiny_model

    phi3 = tiny_model("phi3")
    with pytest.raises(LorakitError) as err:
        write_model_gguf(tmp_path / "x.gguf", phi3.state_dict(), phi3.config, tokenizer_dir("llama"))
    assert "\n" not in str(err.value) and "phi3" in str(err.value)
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text('{"model": {"type": "WordPiece", "vocab": {}}}')
    llama_model = tiny_model("llama")
    with pytest.raises(LorakitError, match="WordPiece") as err:
        write_model_gguf(tmp_path / "x.gguf", llama_model.state_dict(), llama_model.config, folder)
    assert str(folder / "tokenizer.json") in str(err.value)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".x.gguf*"))


# unit roundoff of each adapter encoding, relative to the largest value of a block: f16 and bf16 per
# element (2^-11, 2^-8), q8_0 half a step of max/127 per block of 32 (ggml-quants.c, quantize_row_q8_0)
UNIT = {"f16": 2.0**-11, "bf16": 2.0**-8, "q8_0": 1 / 254}


@pytest.mark.parametrize("outtype", list(UNIT))
@pytest.mark.parametrize("tiny_folder", ["qwen2"], indirect=True)
def test_adapter_gguf_in_each_outtype_runs_in_llama_cpp(tiny_folder, outtype, llama_cpp, tmp_path):
    """An adapter written in f16, bf16 or q8_0: llama.cpp's logits move from lorakit's by no more than
    the base's gap plus the rounding of both factors, 2u of the adapter's effect per product term,
    with the rank's r independent rounding errors adding in quadrature (sqrt(r): the statistical
    rule for rounding errors, Higham, Accuracy and Stability of Numerical Algorithms, sec. 2.8); in
    f16 llama.cpp keeps lorakit's greedy tokens."""
    arch, folder, gguf = tiny_folder
    base, tok = _lorakit(folder)
    ids = _ids(tok)
    base_logits = _logits(base, ids)[1]
    net = _adapter(folder, tmp_path / "ad", "lora")
    ours = _logits(net, ids)[1]
    effect = (ours - base_logits).abs().max().item()
    noise = (llama_logits(llama(llama_cpp, gguf), ids[0].tolist()) - base_logits).abs().max().item()
    assert main(["export", "--adapter", str(tmp_path / "ad"), "--out", str(tmp_path / "ad.gguf"),
                 "--outtype", outtype]) == 0
    diff = (llama_logits(llama(llama_cpp, gguf, tmp_path / "ad.gguf"), ids[0].tolist()) - ours).abs().max().item()
    print(f"{arch} adapter GGUF in {outtype}: max |logits llama.cpp - lorakit| {diff:.2e}, base noise {noise:.2e}, "
          f"adapter effect {effect:.2f}, bound {noise + effect * 2 * UNIT[outtype] * 8**0.5:.2e}")
    bound = noise + effect * 2 * UNIT[outtype] * 8**0.5  # the adapter's rank: 8
    assert noise < diff <= bound  # the encoding really rounded, and no more than it may
    if outtype == "f16":  # at 8 bits a random tiny model's near ties flip (greedy is compared in f32 above)
        assert llama_greedy(llama(llama_cpp, gguf, tmp_path / "ad.gguf"), ids[0].tolist()) == \
            lorakit_greedy(net, ids, None)
