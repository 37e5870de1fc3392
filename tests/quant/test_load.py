"""Meta-device loading: same quantized weights as quantizing a fully loaded model."""

from __future__ import annotations

import pytest
import torch

from lorakit.errors import LorakitError
from lorakit.quant import load_quantized, quantize_model, quantized_layers
from tests.conftest import output_of, tiny_inputs, tiny_model
from tests.quant.helpers import LINEARS


@pytest.mark.parametrize("arch,method", [("llama", "nf4"), ("qwen2", "nf4"), ("gpt2", "nf4"), ("qwen2", "int8")])
def test_meta_loading_equals_quantizing_the_loaded_model(arch, method, tmp_path):
    from transformers import AutoModelForCausalLM

    tiny_model(arch).save_pretrained(tmp_path)
    loaded, tok = load_quantized(tmp_path, method)
    reference = quantize_model(AutoModelForCausalLM.from_pretrained(tmp_path).eval(), method)
    assert tok is None
    assert not [n for n, p in loaded.named_parameters() if p.device.type == "meta"]
    ref_state = reference.state_dict()
    state = loaded.state_dict()
    assert state.keys() == ref_state.keys()
    for key, value in state.items():
        assert torch.equal(value, ref_state[key]), key
    assert len(quantized_layers(loaded)) == LINEARS[arch]
    if arch == "llama":  # tied head: still one tensor shared with the embedding
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    torch.testing.assert_close(output_of(loaded, tiny_inputs(arch)), output_of(reference, tiny_inputs(arch)),
                               atol=0, rtol=0)


def test_missing_tensor_is_a_one_line_error(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_model("qwen2").save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.norm.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LorakitError, match="no tensor for parameter 'model.norm.weight'"):
        load_quantized(tmp_path, "nf4")
