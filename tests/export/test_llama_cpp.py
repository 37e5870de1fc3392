"""Proof by llama.cpp: the GGUF files lorakit writes, run by llama.cpp (llama-cpp-python), give
lorakit's own outputs.

The base is the default model with every tensor in f32: lorakit's own merged export of an
all-zero adapter on all linears and the embedding (so it is also a check that an export with
nothing to add changes nothing). On the wheel's Q4_1 file llama.cpp rounds activations to 8 bits
per block, a noise as large as a small adapter's effect, which would prove nothing. llama.cpp runs
with an f32 KV cache. Its base noise (base alone, llama.cpp vs lorakit: f32 kernels in another
summation order) is measured in each test. The adapted model may differ by no more than that noise
plus the worst-case f32 rounding of the adapter's own contribution: its effect on the logits times
n * eps per layer over the layers (n the longest sum, eps = 2^-24: the standard bound for a dot
product, Higham, Accuracy and Stability of Numerical Algorithms, sec. 3.1). Greedy tokens must
agree outright.
"""

from __future__ import annotations

import pytest
import torch

from lorakit.adapters import LoraConfig, add_adapter, save_adapter
from lorakit.cli import main
from lorakit.models import resolve_model
from tests.adapters.helpers import randomize_adapter
from tests.export.llama import import_llama_cpp, llama, llama_greedy, llama_logits, lorakit_greedy, rounding_bound

PROMPT = "Anna Karenina sat by the window and thought about the letter she had received from"


@pytest.fixture(scope="module")
def llama_cpp():
    return import_llama_cpp()


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from lorakit.models import load_model

    model, tok = load_model()
    folder = tmp_path_factory.mktemp("f32base")
    zero = _with_adapter(model, LoraConfig(r=4, target_modules=r".*(proj|embed_tokens)"), scale=0.0)
    save_adapter(zero, folder / "zero", base_model_name_or_path="smollm2-135m-instruct")
    assert main(["export", "--adapter", str(folder / "zero"), "--out", str(folder / "base.gguf"), "--merged",
                 "--outtype", "f32"]) == 0
    # what a merged export of an all-linear adapter keeps of the wheel's file: its 8-bit embedding
    zero = _with_adapter(model, LoraConfig(r=4, target_modules="all-linear"), scale=0.0)
    save_adapter(zero, folder / "zero_lin", base_model_name_or_path="smollm2-135m-instruct")
    assert main(["export", "--adapter", str(folder / "zero_lin"), "--out", str(folder / "lin.gguf"), "--merged",
                 "--outtype", "f32"]) == 0
    return model, tok, str(folder / "base.gguf"), str(folder / "lin.gguf")


def _with_adapter(model, config: LoraConfig, scale: float) -> torch.nn.Module:
    """A copy of `model` with random factors whose B (lora_B, lora_embedding_B) is scaled by `scale`."""
    import copy

    net = copy.deepcopy(model)
    add_adapter(net, config)
    randomize_adapter(net)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".lora_B." in name or ".lora_embedding_B." in name:
                p.mul_(scale)
    return net


def _adapted(model, tmp_path, **lora) -> torch.nn.Module:
    """An adapter that moves the logits by a few units, as a trained one does (not a random blow-up)."""
    net = _with_adapter(model, LoraConfig(r=8, alpha=16, target_modules="all-linear", **lora), scale=0.05)
    save_adapter(net, tmp_path / "ad", base_model_name_or_path="smollm2-135m-instruct")
    return net


@pytest.mark.parametrize("variant", ["lora", "rslora"])
def test_adapter_and_merged_gguf_give_lorakit_outputs(variant, llama_cpp, smollm2, tmp_path):
    model, tok, base_gguf, merged_base = smollm2
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    net = _adapted(model, tmp_path, use_rslora=variant == "rslora")
    with torch.no_grad():
        base_logits, ours = model(ids).logits[0], net(ids).logits[0]
    effect = (ours - base_logits).abs().max().item()
    assert effect > 1.0  # the adapter matters to the comparison
    rounding = rounding_bound(effect, model.config)
    assert main(["export", "--adapter", str(tmp_path / "ad"), "--out", str(tmp_path / "ad.gguf")]) == 0
    assert main(["export", "--adapter", str(tmp_path / "ad"), "--out", str(tmp_path / "m.gguf"), "--merged",
                 "--outtype", "f32"]) == 0
    assert (tmp_path / "ad.Modelfile").read_text().count("ADAPTER ./ad.gguf") == 1

    expected = lorakit_greedy(net, ids, tok.eos_token_id)
    noise = (llama_logits(llama(llama_cpp, base_gguf), ids[0].tolist()) - base_logits).abs().max().item()
    llm = llama(llama_cpp, base_gguf, str(tmp_path / "ad.gguf"))
    diff = (llama_logits(llm, ids[0].tolist()) - ours).abs().max().item()
    print(f"{variant} adapter GGUF: max |logits llama.cpp - lorakit| {diff:.2e}, base noise {noise:.2e}, "
          f"adapter effect {effect:.2f}, its rounding bound {rounding:.2e}")
    assert diff <= noise + rounding
    assert llama_greedy(llm, ids[0].tolist()) == expected

    # merged: it keeps the wheel's 8-bit embedding, whose kernels round activations to 8 bits (the
    # greedy tokens of this random adapter already differ there), so llama.cpp's outputs are printed,
    # not compared; the merged tensors are compared, exactly, and the file must load and run
    _assert_merged_tensors_equal(tmp_path / "m.gguf", net)
    merged = llama(llama_cpp, str(tmp_path / "m.gguf"))
    diff = (llama_logits(merged, ids[0].tolist()) - ours).abs().max().item()
    lin_noise = (llama_logits(llama(llama_cpp, merged_base), ids[0].tolist()) - base_logits).abs().max().item()
    print(f"{variant} merged GGUF: max |logits llama.cpp - lorakit| {diff:.2e} (its base: {lin_noise:.2e})")

    # merged from the Hugging Face folder lorakit loads, seen as a plain folder (lorakit's SOURCE note
    # left out, so the whole model is written, in f32): compared
    folder = tmp_path / "hf"
    folder.mkdir()
    for path in resolve_model("smollm2-135m-instruct").iterdir():
        if path.name != "SOURCE":
            (folder / path.name).symlink_to(path)
    assert main(["export", "--adapter", str(tmp_path / "ad"), "--out", str(tmp_path / "hf.gguf"), "--merged",
                 "--outtype", "f32", "--model", str(folder)]) == 0
    whole = llama(llama_cpp, str(tmp_path / "hf.gguf"))
    diff = (llama_logits(whole, ids[0].tolist()) - ours).abs().max().item()
    print(f"{variant} merged GGUF from the HF folder: max |logits llama.cpp - lorakit| {diff:.2e}")
    assert diff <= noise + rounding
    assert llama_greedy(whole, ids[0].tolist()) == expected


def _assert_merged_tensors_equal(path, net) -> None:
    """Every adapted tensor in the merged f32 file == lorakit's merged weight, in GGUF row order."""
    import copy

    import gguf

    from lorakit.adapters import adapter_layers, merge_and_unload
    from lorakit.export.encode import decode
    from lorakit.export.names import gguf_target

    adapted = [f"{name}.weight" for name, _ in adapter_layers(net)]
    state = merge_and_unload(copy.deepcopy(net)).state_dict()
    target = gguf_target(net.config)
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    for param in adapted:
        t = tensors[target.name(param)]
        got = decode(t.data, t.tensor_type).reshape(state[param].shape)
        assert torch.equal(got, target.rows_to_gguf(param, state[param])), param
