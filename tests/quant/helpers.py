"""Shared facts about the tiny test models."""

# linear layers per tiny model (2 blocks): llama-likes have q/k/v/o + gate/up/down, GPT-2 has
# c_attn, attn.c_proj, c_fc, mlp.c_proj; the output head is not counted (it stays dense)
LINEARS = {"llama": 14, "qwen2": 14, "gpt2": 8}
