"""Load any `--model` as a sequence classifier: ``AutoModelForSequenceClassification`` with labels.

Encoders (the BERT family) classify from their first token; decoders (llama, qwen2, gemma3, ...)
get a ``score`` head that reads the last token that is not padding, so the config's
`pad_token_id` must be the id the batches are padded with: it is set from the tokenizer. A
checkpoint that is a causal LM (or a plain encoder) gets a new, randomly initialised head (seed
torch first for a reproducible one); the adapter trains it in full (`lorakit.adapters.tasks`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch

from lorakit.errors import LorakitError, one_line, short_repr
from lorakit.models import load_tokenizer, resolve_model

log = logging.getLogger("lorakit")


def label_maps(labels: Sequence[str] | int) -> tuple[dict[int, str], dict[str, int]]:
    """``(id2label, label2id)`` for class names (id i is ``labels[i]``) or a count K
    (names ``LABEL_0`` .. ``LABEL_{K-1}``, transformers' default). Raises `LorakitError` for fewer
    than two classes, a name that is not a non-empty string, or a repeated name."""
    if isinstance(labels, bool) or not isinstance(labels, (int, Sequence)) or isinstance(labels, str):
        raise LorakitError(f"labels must be a list of class names or a number of classes, got {short_repr(labels)}")
    names = [f"LABEL_{i}" for i in range(labels)] if isinstance(labels, int) else list(labels)
    if len(names) < 2:
        raise LorakitError(f"a classifier needs at least 2 labels, got {len(names)}; pass the class names")
    bad = next((n for n in names if not isinstance(n, str) or not n.strip()), None)
    if bad is not None:
        raise LorakitError(f"label {short_repr(bad)} is not a class name: labels are non-empty strings")
    repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if repeated is not None:
        raise LorakitError(f"label {short_repr(repeated)} is given twice: each class name once")
    return dict(enumerate(names)), {n: i for i, n in enumerate(names)}


def has_classifier_head(config) -> bool:
    """Whether a checkpoint's config says its weights include a sequence-classification head."""
    return any(a.endswith("ForSequenceClassification") for a in getattr(config, "architectures", None) or ())


def _pad_id(model, tok, spec) -> int:
    """The id the model pools past: the tokenizer's pad id (batches are padded with it), else the
    config's; a model with neither cannot classify a padded batch, so it is refused."""
    text = model.config.get_text_config()
    pad = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else text.pad_token_id
    if pad is None:
        raise LorakitError(f"model '{spec}' has no pad token (tokenizer or config.json): a classifier pools the last "
                           "token that is not padding; set pad_token_id in its config.json or ship a tokenizer with a "
                           "pad or eos token")
    return int(pad)


def load_classifier(
    spec: str | os.PathLike | None,
    labels: Sequence[str] | int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    with_tokenizer: bool = True,
    head_from_adapter: bool = False,
):
    """Load `spec` (alias, folder, .gguf or Hub id: `lorakit.models.resolve_model`) as a sequence
    classifier: returns ``(model, tokenizer)``, the model in eval mode, its forward mapping
    ``input_ids, attention_mask [batch, seq]`` to ``logits [batch, num_labels]``.

    `labels` (class names, or their number) gives it a head of that many outputs and sets
    ``config.id2label`` / ``label2id``; a checkpoint's own head is kept where it has as many
    outputs, else replaced by a new one. None: the checkpoint's own head and labels, refused for a
    checkpoint without one. ``config.pad_token_id`` is set to the tokenizer's pad id (for
    decoders, what the head pools by); with `with_tokenizer` False the tokenizer is still read
    for it when the folder has one, and None is returned in its place. `head_from_adapter`: the
    caller loads an adapter holding the head next, so a new head is not announced.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    # its report of the new head's weights as "newly initialized" is what `labels` asks for
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    path = resolve_model(spec)
    config = AutoConfig.from_pretrained(str(path))
    if labels is None and not has_classifier_head(config):
        raise LorakitError(f"model '{spec}' has no classifier head ({', '.join(config.architectures or ['none'])}): "
                           "pass labels (the class names) to give it a new one")
    kwargs = {}
    if labels is not None:
        id2label, label2id = label_maps(labels)
        kwargs = dict(num_labels=len(id2label), id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True)
        if not has_classifier_head(config) and not head_from_adapter:
            log.info("model %s: a new classifier head for %d labels (randomly initialised)", spec, len(id2label))
    tok = _tokenizer_if_any(path, spec, required=with_tokenizer)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=dtype, **kwargs)
    except ValueError as exc:  # transformers: no sequence-classification class for this architecture
        raise LorakitError(f"model '{spec}' ({config.model_type}) cannot load as a sequence classifier: "
                           f"{one_line(exc, 160)}") from None
    pad = _pad_id(model, tok, spec)
    for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        cfg.pad_token_id = pad
    model.to(device)
    model.eval()
    return model, (tok if with_tokenizer else None)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json")


def _tokenizer_if_any(path, spec, *, required: bool):
    """The folder's tokenizer (pad set to eos where it has none: `lorakit.models.load_tokenizer`);
    None when it has no tokenizer files and none is required."""
    if not any((path / n).is_file() for n in _TOKENIZER_FILES):
        if required:
            raise LorakitError(f"model '{spec}' has no tokenizer ({path} holds none of {', '.join(_TOKENIZER_FILES)}): "
                               "save its tokenizer there, or load with with_tokenizer=False")
        return None
    return load_tokenizer(path)
