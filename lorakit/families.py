"""What lorakit knows about each model family, in one table: every other module asks here.

An entry says, for the `model_type`s of one family:
* `presets`: what ``--targets attention`` and ``--targets mlp`` mean (PEFT's rules: a list of
  module-name suffixes, or a full-match regex); ``all-linear`` needs no entry;
* `fuse`: groups of frozen projections that read one input and may run as one GEMM
  (`lorakit.train.fuse`), as ``(parent attribute of a decoder layer, member names)``;
* `lean`: what the lean layers (`lorakit.train.lean`) may recompute in backward: the norms whose
  outputs feed linears, and the gated MLP's activation; None where they do not apply;
* `head`: how the causal-LM loss reads the logits: ``plain`` (``lm_head(final hidden)``, with the
  config's ``final_logit_softcapping`` when it is set) or ``model`` (the model's own forward);
* `gguf_arch`: the llama.cpp architecture name (for GGUF export); `gguf_permute_qk`: whether
  llama.cpp's converter reorders the rows of q/k (its rotary layout for the llama family; Qwen
  and Gemma keep HF's), so an adapter's q/k `lora_B` rows are reordered the same way;
  `gguf_whole`: whether `lorakit export --merged` writes the whole model from a Hugging Face folder
  (`lorakit.export.gguf_model`: hyper-parameters and tokenizer as llama.cpp's loader for
  `gguf_arch` reads them);
  `why_not`: why a speed path does not apply, shown in the speed plan;
* `cls_heads`: the module name(s) of the head its ``AutoModelForSequenceClassification`` puts on
  top (``score`` on decoder LMs, ``classifier`` on encoders), which a classification adapter
  trains in full and saves (PEFT's SEQ_CLS `modules_to_save`).

Adding a family is one entry here plus its tiny random-weight model in tests/conftest.py (the
registry's tests check that every entry has one and that its fast paths change no value).
"""

from __future__ import annotations

from dataclasses import dataclass, field

ATTENTION, MLP = "attention", "mlp"
PLAIN, MODEL = "plain", "model"  # head kinds


@dataclass(frozen=True)
class Lean:
    """What lean layers recompute: the outputs of `norms`, and ``act(gate(x)) * up(x)``.

    `recomputed_input_of`: the linears whose saved input that is (the planner counts them out):
    the attention projections read the first norm's output, gate/up the second's, and down_proj
    the gated product (the names `lorakit.train.lean.LeanMLP` works with)."""

    norms: tuple[str, ...]
    activation: str  # "silu" or "gelu_tanh": the gated MLP's activation (lorakit.train.lean.GATES)
    recomputed_input_of: frozenset[str] = frozenset({"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj",
                                                     "down_proj"})


@dataclass(frozen=True)
class Family:
    """One model family (see the module docstring for each field)."""

    name: str
    model_types: tuple[str, ...]
    presets: dict[str, list[str] | str] = field(default_factory=dict)
    fuse: tuple[tuple[str, tuple[str, ...]], ...] = ()
    lean: Lean | None = None
    head: str = MODEL
    gguf_arch: str | None = None
    gguf_permute_qk: bool = False
    gguf_whole: bool = False
    why_not: dict[str, str] = field(default_factory=dict)  # speed path -> reason it is off
    cls_heads: tuple[str, ...] = ("score",)

    def reason(self, path: str) -> str:
        """Why `path` ('fuse' or 'lean') is off for this family ('' if it applies)."""
        if path == "fuse" and self.fuse or path == "lean" and self.lean:
            return ""
        return self.why_not.get(path, f"not available for {self.name}")


_LLAMA_PRESETS = {
    ATTENTION: ["q_proj", "k_proj", "v_proj", "o_proj"],
    MLP: ["gate_proj", "up_proj", "down_proj"],
}
_QKV_GATE_UP = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))
# Llama, Mistral, Qwen: pre-norms before attention and MLP, SwiGLU
_LLAMA_LEAN = Lean(("input_layernorm", "post_attention_layernorm"), "silu")
# Gemma 1: the same layout, GeGLU (tanh GELU)
_GEMMA_LEAN = Lean(("input_layernorm", "post_attention_layernorm"), "gelu_tanh")
# Gemma 2/3: post_attention_layernorm normalises the attention *output*; the MLP reads
# pre_feedforward_layernorm's (arXiv:2408.00118, sec. 2)
_GEMMA2_LEAN = Lean(("input_layernorm", "pre_feedforward_layernorm"), "gelu_tanh")
_BERT_PRESETS = {
    ATTENTION: ["query", "key", "value", "attention.output.dense"],
    MLP: r".*\.layer\.\d+\.(intermediate|output)\.dense",
}
_ENCODER = {"fuse": "encoder: the causal-LM trainer does not train it", "lean": "encoder: not a causal LM"}
_CLASSIFIER = ("classifier",)  # the encoders' head

FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama",), _LLAMA_PRESETS, fuse=_QKV_GATE_UP, lean=_LLAMA_LEAN, head=PLAIN, gguf_arch="llama",
           gguf_permute_qk=True, gguf_whole=True),
    Family("smollm3", ("smollm3",), _LLAMA_PRESETS, fuse=_QKV_GATE_UP, lean=_LLAMA_LEAN, head=PLAIN,
           gguf_arch="smollm3", gguf_permute_qk=True),
    Family("mistral", ("mistral",), _LLAMA_PRESETS, fuse=_QKV_GATE_UP, lean=_LLAMA_LEAN, head=PLAIN,
           gguf_arch="llama", gguf_permute_qk=True),
    Family("qwen2", ("qwen2",), _LLAMA_PRESETS, fuse=_QKV_GATE_UP, lean=_LLAMA_LEAN, head=PLAIN, gguf_arch="qwen2",
           gguf_whole=True),
    Family("qwen3", ("qwen3",), _LLAMA_PRESETS, fuse=_QKV_GATE_UP, lean=_LLAMA_LEAN, head=PLAIN, gguf_arch="qwen3"),
    Family("gemma", ("gemma",), _LLAMA_PRESETS, fuse=_QKV_GATE_UP, lean=_GEMMA_LEAN, head=PLAIN, gguf_arch="gemma"),
    Family("gemma2", ("gemma2",), _LLAMA_PRESETS, fuse=_QKV_GATE_UP, lean=_GEMMA2_LEAN, head=PLAIN,
           gguf_arch="gemma2"),
    Family("gemma3", ("gemma3_text",), _LLAMA_PRESETS, fuse=_QKV_GATE_UP, lean=_GEMMA2_LEAN, head=PLAIN,
           gguf_arch="gemma3", gguf_whole=True),
    # the multimodal wrapper: its text decoder sits one level deeper, and its forward adds vision
    Family("gemma3-multimodal", ("gemma3",), _LLAMA_PRESETS, gguf_arch="gemma3",
           why_not={"fuse": "multimodal wrapper: load its text model (Gemma3ForCausalLM)",
                    "lean": "multimodal wrapper: load its text model (Gemma3ForCausalLM)"}),
    Family("phi3", ("phi3",), {ATTENTION: ["qkv_proj", "o_proj"], MLP: ["gate_up_proj", "down_proj"]},
           head=PLAIN, gguf_arch="phi3",
           why_not={"fuse": "q/k/v and gate/up are one projection each in the checkpoint already",
                    "lean": "its MLP splits one gate_up projection (not the gate(x), up(x) pattern)"}),
    Family("gpt2", ("gpt2",), {ATTENTION: ["c_attn", "attn.c_proj"], MLP: ["c_fc", "mlp.c_proj"]},
           head=PLAIN, gguf_arch="gpt2",
           why_not={"fuse": "c_attn holds q/k/v in one Conv1D already",
                    "lean": "LayerNorm and an ungated GELU MLP (not the gated pattern)"}),
    Family("bert", ("bert",), _BERT_PRESETS, gguf_arch="bert", why_not=_ENCODER, cls_heads=_CLASSIFIER),
    Family("roberta", ("roberta",), _BERT_PRESETS, gguf_arch="bert", why_not=_ENCODER, cls_heads=_CLASSIFIER),
    Family("distilbert", ("distilbert",), {ATTENTION: ["q_lin", "k_lin", "v_lin", "out_lin"], MLP: ["lin1", "lin2"]},
           # PEFT matches its head names as plain suffixes: "classifier" takes pre_classifier too
           why_not=_ENCODER, cls_heads=("pre_classifier", "classifier")),
)

# any other architecture transformers builds: all-linear or named targets, the model's own logits
# (its classifier head: either of the names PEFT tries for SEQ_CLS)
FALLBACK = Family("unknown", (), why_not={"fuse": "architecture not in lorakit's family registry",
                                          "lean": "architecture not in lorakit's family registry"},
                  cls_heads=("classifier", "score"))

_BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}


def family_of(model_type: str | None) -> Family:
    """The registry entry for a transformers `model_type` (`FALLBACK` for one it does not list)."""
    return _BY_TYPE.get(model_type or "", FALLBACK)


def family_for(model_or_config) -> Family:
    """The registry entry for a model or its config (reads ``config.model_type``)."""
    config = getattr(model_or_config, "config", model_or_config)
    return family_of(getattr(config, "model_type", None))


def decoder_layers(model) -> list:
    """The model's repeated blocks, in order: modules whose class transformers lists in the model's
    `_no_split_modules` (any architecture; the fast paths skip blocks without the parts they want)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def preset_families() -> list[str]:
    """model_types that define ``--targets attention`` / ``mlp`` (for error messages)."""
    return sorted(t for f in FAMILIES if f.presets for t in f.model_types)
