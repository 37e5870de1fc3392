"""A Hugging Face tokenizer folder (its tokenizer.json) -> the ``tokenizer.*`` metadata llama.cpp reads.

Two kinds of tokenizer.json are written, each as llama.cpp tokenizes it:

* byte-level BPE (GPT-2's byte alphabet; SmolLM2, Qwen2, Llama 3): model ``gpt2`` with the tokens,
  their types and the merges. ``tokenizer.ggml.pre`` names the llama.cpp pre-tokenizer that splits
  text as the tokenizer.json's pre_tokenizer does. It is recognised from that pre_tokenizer itself:
  its shape (ByteLevel alone, Digits + ByteLevel, or a Split by a known regex + ByteLevel) and the
  regex, matched exactly (`_BYTE_LEVEL_PRE`); anything else is refused in one line, since a wrong
  pre-tokenizer gives a file that loads and tokenizes differently.
* SentencePiece-style BPE (spaces normalized to U+2581, byte fallback; Gemma's tokenizer.json):
  model ``llama`` (llama.cpp's SentencePiece tokenizer) with scores and types. That tokenizer
  joins, at each step, the adjacent pair whose concatenation is the highest-scoring token; BPE
  applies the lowest-ranked merge. A token's score is therefore minus the rank of the first merge
  that makes it, which orders the joins as the merges do; tokens no merge makes (characters, byte
  and added tokens) score below every merged one.

Added tokens keep their text (a normalized one with U+2581 written back as spaces, since llama.cpp
matches added tokens in the raw text): special ones are CONTROL, the others USER_DEFINED.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import gguf

from lorakit.errors import LorakitError, one_line

SPACE = "\u2581"  # SentencePiece's visible space
# llama.cpp names its tokenizer models, and some pre-tokenizers, after the model that brought them:
# byte-level BPE is GPT-2's, SentencePiece LLaMA's, the Qwen2 split Qwen2's
BYTE_BPE, SENTENCEPIECE, QWEN2_PRE = (gguf.MODEL_ARCH_NAMES[a] for a in (gguf.MODEL_ARCH.GPT2, gguf.MODEL_ARCH.LLAMA,
                                                                          gguf.MODEL_ARCH.QWEN2))
# The split regexes of the byte-level tokenizers lorakit names a llama.cpp pre-tokenizer for.
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# pre_tokenizer shape (`_shape`) + the model's ignore_merges -> llama.cpp's pre-tokenizer name
_BYTE_LEVEL_PRE = {
    ((("byte_level", True, False),), False): "gpt-2",  # GPT-2's own regex, inside ByteLevel
    ((("digits", True), ("byte_level", True, False)), False): "smollm",  # each digit apart, then GPT-2's
    ((("split", QWEN2_REGEX, "Isolated", False), ("byte_level", False, False)), False): QWEN2_PRE,
    ((("split", LLAMA3_REGEX, "Isolated", False), ("byte_level", False, False)), True): "llama-bpe",
}
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass
class GgufVocab:
    """What llama.cpp reads of a tokenizer; `tokens`/`types` (and `scores`) have one entry per id."""

    model: str  # BYTE_BPE or SENTENCEPIECE
    pre: str
    tokens: list[str]
    types: list[int]  # gguf.TokenType values
    scores: list[float] | None  # SentencePiece only
    merges: list[str] | None  # byte-level BPE only: "left right", best first
    special: dict[str, int]  # "bos"/"eos"/"unk"/"pad" -> id
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    chat_template: str | list | None


def _read_json(path: Path, required: bool = True) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise LorakitError(f"{path}: not found; GGUF export reads the tokenizer from a tokenizer.json "
                               "(save the tokenizer with transformers' save_pretrained to write one)") from None
        return {}
    except (OSError, ValueError) as exc:
        raise LorakitError(f"{path}: cannot be read ({one_line(exc, 120)}); restore the file") from None


def _shape(pre: dict | None) -> tuple:
    """A pre_tokenizer as the tuple of what decides its splits (trim_offsets and the like left out)."""
    if pre is None:
        return ()
    kind = pre.get("type")
    if kind == "Sequence":
        return tuple(part for sub in pre.get("pretokenizers", []) for part in _shape(sub))
    if kind == "ByteLevel":
        return (("byte_level", bool(pre.get("use_regex", True)), bool(pre.get("add_prefix_space", False))),)
    if kind == "Digits":
        return (("digits", bool(pre.get("individual_digits", False))),)
    if kind == "Split":
        pattern = pre.get("pattern", {})
        return (("split", pattern.get("Regex", pattern.get("String")), pre.get("behavior"),
                 bool(pre.get("invert", False))),)
    return ((kind,),)


def _spm_prefix(normalizer: dict | None) -> bool | None:
    """Whether a SentencePiece-style normalizer prepends U+2581 (None: not one llama.cpp's does):
    ``Replace(' ', U+2581)``, optionally after ``Prepend(U+2581)``."""
    steps = normalizer.get("normalizers", []) if normalizer and normalizer.get("type") == "Sequence" else [normalizer]
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    if steps == [replace]:
        return False
    if len(steps) == 2 and steps[0] == {"type": "Prepend", "prepend": SPACE} and steps[1] == replace:
        return True
    return None


def _template_ends(post: dict | None) -> tuple[str | None, str | None]:
    """(first, last) special token of the single-sequence template of a post_processor, if any."""
    if post is None:
        return None, None
    if post.get("type") == "Sequence":
        found = [_template_ends(p) for p in post.get("processors", [])]
        return next((f for f, _ in found if f), None), next((la for _, la in found if la), None)
    if post.get("type") != "TemplateProcessing":
        return None, None
    single = post.get("single", [])
    special = [item["SpecialToken"]["id"] if "SpecialToken" in item else None for item in single]
    return (special[0], special[-1]) if special else (None, None)


def _merge_pair(merge) -> tuple[str, str]:
    """A tokenizer.json merge (``["a", "b"]``, or ``"a b"`` in older files) as (left, right)."""
    if isinstance(merge, list):
        return merge[0], merge[1]
    left, _, right = merge.partition(" ")
    return left, right


def _special_ids(config: dict, model: dict, by_text: dict[str, int], first: str | None,
                 fallback: dict[str, int | None]) -> dict[str, int]:
    """bos/eos/unk/pad ids: tokenizer_config.json's tokens, else the template's bos, the model's
    unk_token, the model config's ids."""
    found = {}
    for kind in ("bos", "eos", "unk", "pad"):
        value = config.get(f"{kind}_token")
        text = value.get("content") if isinstance(value, dict) else value
        if text is None:
            text = {"bos": first, "unk": model.get("unk_token")}.get(kind)
        token_id = by_text.get(text) if text is not None else None
        if token_id is None:
            token_id = fallback.get(kind)
        if token_id is not None:
            found[kind] = int(token_id)
    return found


def _chat_template(tokenizer_dir: Path, config: dict) -> str | list | None:
    jinja = tokenizer_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if template is None:
        template = _read_json(tokenizer_dir / "chat_template.json", required=False).get("chat_template")
    return template


def read_vocab(tokenizer_dir: Path, vocab_size: int, fallback_ids: dict[str, int | None] | None = None) -> GgufVocab:
    """The GGUF tokenizer metadata of `tokenizer_dir` (tokenizer.json, tokenizer_config.json, a chat
    template), padded with UNUSED tokens to the model's `vocab_size` (its embedding's rows).

    Raises a one-line LorakitError naming the file for a tokenizer llama.cpp would not reproduce."""
    import gguf

    path = tokenizer_dir / "tokenizer.json"
    spec = _read_json(path)
    config = _read_json(tokenizer_dir / "tokenizer_config.json", required=False)
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise LorakitError(f"{path}: a {model.get('type')!r} tokenizer; lorakit writes BPE tokenizers to GGUF "
                           "(convert this model with llama.cpp's convert_hf_to_gguf.py)")
    added = {int(a["id"]): a for a in spec.get("added_tokens", [])}
    texts = {int(i): t for t, i in model["vocab"].items()}
    if max([*texts, *added], default=-1) >= vocab_size:
        raise LorakitError(f"{path}: has token ids up to {max([*texts, *added])} but the model has {vocab_size} "
                           "embedding rows; pass the tokenizer this model was trained with")
    pairs = [_merge_pair(m) for m in model.get("merges", [])]
    spm = bool(model.get("byte_fallback"))
    prefix = _spm_prefix(spec.get("normalizer")) if spm else None
    if spm:
        pre_ok = _shape(spec.get("pre_tokenizer")) in ((), (("split", " ", "MergedWithPrevious", False),))
        if prefix is None or not pre_ok:  # a Split on ' ' sees no space once the normalizer replaced them
            raise LorakitError(f"{path}: a byte-fallback BPE tokenizer whose normalizer/pre_tokenizer is not the "
                               "SentencePiece form llama.cpp reproduces (spaces replaced by U+2581, no splits)")
        pre = "default"
    else:
        normalizer = spec.get("normalizer")
        key = (_shape(spec.get("pre_tokenizer")), bool(model.get("ignore_merges", False)))
        pre = _BYTE_LEVEL_PRE.get(key)
        # NFC (Qwen2's) is not applied by llama.cpp either: text already in NFC tokenizes the same
        if pre is None or normalizer not in (None, {"type": "NFC"}):
            raise LorakitError(f"{path}: its pre-tokenizer is not one lorakit can name for llama.cpp (GPT-2 byte-level,"
                               " SmolLM digits, Qwen2 or Llama 3 regex); convert with llama.cpp's convert_hf_to_gguf.py")
    ranks: dict[str, int] = {}
    for rank, (left, right) in enumerate(pairs):
        ranks.setdefault(left + right, rank)
    T = gguf.TokenType
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(T.UNUSED)] * vocab_size
    scores = [-float(len(pairs) + i) for i in range(vocab_size)]  # below every merged token
    for i, text in texts.items():
        tokens[i], types[i] = text, int(T.NORMAL)
        if spm and _BYTE_TOKEN.fullmatch(text):
            types[i] = int(T.BYTE)
        elif spm and text in ranks:
            scores[i] = -float(ranks[text])
    for i, token in added.items():
        text = token["content"]
        if spm and token.get("normalized", False):
            text = text.replace(SPACE, " ")  # llama.cpp matches added tokens before it escapes spaces
        tokens[i], types[i] = text, int(T.CONTROL if token.get("special") else T.USER_DEFINED)
    by_text = {**{t: i for i, t in texts.items()}, **{a["content"]: i for i, a in added.items()}}
    first, last = _template_ends(spec.get("post_processor"))
    special = _special_ids(config, model, by_text, first, fallback_ids or {})
    add_bos = bool(config.get("add_bos_token", first is not None))
    add_eos = bool(config.get("add_eos_token", last is not None and by_text.get(last) == special.get("eos")))
    if add_bos and "bos" not in special or add_eos and "eos" not in special:
        raise LorakitError(f"{path}: the tokenizer adds a bos/eos token it does not name; set bos_token/eos_token in "
                           f"{tokenizer_dir / 'tokenizer_config.json'}")
    return GgufVocab(model=SENTENCEPIECE if spm else BYTE_BPE, pre=pre, tokens=tokens, types=types,
                     scores=scores if spm else None, merges=None if spm else [f"{a} {b}" for a, b in pairs], special=special,
                     add_bos=add_bos, add_eos=add_eos, add_space_prefix=bool(prefix),
                     chat_template=_chat_template(tokenizer_dir, config))


def add_vocab(writer, vocab: GgufVocab) -> None:
    """Add `vocab`'s ``tokenizer.*`` keys to a `gguf.GGUFWriter`."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges is not None:
        writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
              "pad": writer.add_pad_token_id}
    for kind, token_id in vocab.special.items():
        adders[kind](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
