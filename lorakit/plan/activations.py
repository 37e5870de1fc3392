"""Activation and loss memory of one training step, counted tensor by tensor (fp32, 4 bytes).

Per decoder layer, autograd keeps for backward (per token; H hidden, I intermediate, K the
key/value width, A the attention heads; counted with ``torch.autograd.graph.saved_tensors_hooks``
on Llama/Qwen2 layers, sdpa attention, and exact for every size tried):

* always, once anything before the layer needs a gradient: the layer input (RMSNorm), the
  rotated query, the attention output, the mid-layer residual (4 H); rotated key and value
  (2 K); sdpa's log-sum-exp (A); gate, SiLU(gate) and up projections (3 I); two RMSNorm
  reciprocal roots (2);
* the input of each trained linear, once per distinct input (q/k/v share one, gate/up one,
  down has its own): H, H and I for all-linear LoRA;
* each LoRA adapter's ``A x`` (r), and with LoRA dropout a bool mask of its input (x itself is kept as without);
* full fine-tuning: the two normalised inputs the trained norm weights multiply (2 H).

Lean layers (`lorakit.train.lean`, when the speed plan's `lean` is on: the trainer's default
without checkpointing, where the family registry allows them): SiLU(gate) (I) and the recomputable linear inputs (norm outputs, the SwiGLU product)
are not kept, except the first layer's input norm output, which reads the frozen embedding.

With gradient checkpointing only each layer's input (H) is kept, and one layer's set is rebuilt
at a time during backward. While a layer runs backward, its incoming gradient, the residual
gradient and the gate/up gradients are alive too (2 H + 2 I).

The loss is lorakit's chunked cross entropy (`lorakit.train.loss`): one (chunk x vocab) buffer
holds a chunk's logits, then in place their softmax and gradient; besides it, the labelled
hidden states and their gradient (2 x tokens x H).
"""

from __future__ import annotations

from lorakit.plan.arch import ArchFacts

FP32 = 4

# Most logits one chunk of the loss holds (2^26 values). A vocabulary of a few hundred thousand at
# 1024 tokens a chunk made the loss the largest tensor of a step (issue 18); at this size each
# chunk's head GEMM still has hundreds of rows.
LOGITS_BUDGET = 1 << 26
MIN_CHUNK_TOKENS = 64


def loss_chunk_tokens(vocab: int, asked: int | None = None) -> int:
    """Most tokens per chunk of the loss: `asked` (--loss-chunk), else as many as `LOGITS_BUDGET` allows."""
    return asked if asked else max(MIN_CHUNK_TOKENS, LOGITS_BUDGET // max(vocab, 1))


def even_chunk(tokens: int, most: int) -> int:
    """The chunk size that splits `tokens` into as few chunks of at most `most` as possible, evenly."""
    if tokens <= 0:
        return most
    pieces = -(-tokens // most)
    return -(-tokens // pieces)


def saved_bytes_per_token_per_layer(arch: ArchFacts, method: str, rank: int, lora_dropout: float,
                                    lean: bool = False) -> int:
    """Bytes autograd saves per token in one decoder layer (see the module docstring)."""
    n = 4 * arch.hidden + 2 * arch.kv_dim + arch.heads + 3 * arch.intermediate + 2
    n += sum(width * count for width, count in arch.saved_input_groups.items())
    if lean:
        n -= arch.intermediate + arch.recomputable_inputs
    extra = 0
    if method == "full":
        n += 2 * arch.hidden
    else:
        n += rank * -(-arch.adapted_linears // arch.layers)
        if lora_dropout > 0:  # a bool mask of its input per adapter; x itself is kept as without dropout
            extra = -(-arch.adapted_in_features // arch.layers)  # (`lorakit.adapters.dropout.dropped_down`)
    return FP32 * n + extra


def backward_working_set_per_token(arch: ArchFacts) -> int:
    """Gradients alive while one layer runs backward (elements per token)."""
    return 2 * arch.hidden + 2 * arch.intermediate


def activation_bytes(arch: ArchFacts, method: str, tokens: int, rank: int, grad_checkpoint: bool,
                     lora_dropout: float = 0.0, lean: bool = True) -> int:
    """Peak bytes of saved activations plus one layer's backward working set, for `tokens` = B x S;
    `lean`: the speed plan's (lean layers run)."""
    layer = saved_bytes_per_token_per_layer(arch, method, rank, lora_dropout, lean)
    work = FP32 * (backward_working_set_per_token(arch) + arch.hidden)  # + the embedding output
    if grad_checkpoint:  # every layer's input + the one layer being rebuilt
        return tokens * (FP32 * arch.layers * arch.hidden + layer + work)
    first_norm = FP32 * arch.hidden if lean and method != "full" and arch.recomputable_inputs else 0
    return tokens * (arch.layers * layer + work + first_norm)


def loss_bytes(arch: ArchFacts, tokens: int, loss_chunk: int | None = None) -> int:
    """Peak bytes of the chunked loss: one chunk's logits buffer, the labelled hidden states and dL/dh
    (`loss_chunk`: --loss-chunk, None for the trainer's default)."""
    chunk = even_chunk(tokens, loss_chunk_tokens(arch.vocab, loss_chunk))
    return FP32 * (chunk * arch.vocab + 2 * tokens * arch.hidden)
