"""A classifier base served for classification only: an encoder (the BERT family), or a folder that
is a whole sequence classifier (``lorakit train --task classify --method full|head``).

Such a model cannot generate text, so no engine runs: the model is
`lorakit.classifier.load_classifier`'s, its SEQ_CLS adapters load onto it as they do for `lorakit
eval --task classify` (each with its own copy of the head), and one lock keeps a load, an unload
and a classification from overlapping (a classification sets its adapter active, then runs the
model). A prefix- or prompt-tuning classifier is read and checked when it loads, and attached by
its hooks for the classifications that name it only (they would act on every row otherwise). The
base itself classifies when it has a head of its own.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from lorakit.adapters import adapters, delete_adapter, disable_adapters, remove_virtual_adapter, set_adapter
from lorakit.adapters.io import PREFIX, attach_adapter, prepare_adapter, read_adapter_weights
from lorakit.adapters.prompt_io import attach_virtual_tensors, read_virtual_folder, virtual_peft_type
from lorakit.adapters.virtual_cls import HEAD_PREFIX
from lorakit.errors import AdapterLoadError, LorakitError
from lorakit.families import family_for
from lorakit.infer import hotswap
from lorakit.infer.classifier_runner import in_chunks, padded, read_labels
from lorakit.infer.request import EngineError, PromptTooLongError, UnknownAdapterError


def head_classes(folder: Path, config) -> int | None:
    """The number of classes of the SEQ_CLS adapter in `folder`, read from its head's weights
    (its 2-D weights under the family's head names whose rows are not the hidden size); None when
    they do not tell (no head, or several candidates)."""
    try:
        tensors = read_adapter_weights(folder)
    except AdapterLoadError:
        return None
    hidden = getattr(config.get_text_config(), "hidden_size", None)
    # LoRA files key the head base_model.model.<head>, prefix/prompt ones base_model.<head> (PEFT's layouts)
    heads = tuple(f"{p}{h}." for p in (PREFIX, HEAD_PREFIX) for h in family_for(config).cls_heads)
    counts = {t.shape[0] for k, t in tensors.items()
              if k.startswith(heads) and k.endswith("weight") and t.ndim == 2 and t.shape[0] != hidden}
    return counts.pop() if len(counts) == 1 else None


def token_limit(model, tokenizer, max_context: int) -> int:
    """Tokens one input may have: `max_context`, the tokenizer's limit and the position table's, the least."""
    limits = [max_context, getattr(model.config.get_text_config(), "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    return min(n for n in limits if isinstance(n, int) and 0 < n < 1_000_000)


class ClassifierModel:
    """Serves a sequence classifier `model` (eval mode, pad_token_id set) and its SEQ_CLS adapters.

    `own_head`: whether the base's head was trained (a classifier checkpoint), so that requests
    naming the base classify with it; `labels`: its class names then."""

    def __init__(self, model, tokenizer, *, max_tokens: int, own_head: bool, labels: list[str] | None = None) -> None:
        self.model, self.tokenizer, self.max_tokens = model, tokenizer, max_tokens
        self.pad_id = int(model.config.pad_token_id)
        self.own_head = own_head
        self.base_labels = labels
        self._labels: dict[str, list[str]] = {}
        self._virtual: dict[str, tuple] = {}  # prefix/prompt adapter name -> (config, tensors), read and checked
        self._lock = threading.Lock()

    def names(self) -> tuple[str, ...]:
        return tuple(self._labels)

    def is_classifier(self, name: str | None) -> bool:
        return name in self._labels

    def resolve(self, model: str, base_name: str) -> str | None:
        """The adapter a /classify request's `model` names (None: the base, when it has a head)."""
        if model in self._labels:
            return model
        loaded = ", ".join(self._labels) or "none loaded"
        if model == base_name:
            if self.own_head:
                return None
            raise EngineError(f"model {model!r} has no trained classifier head; name one of its classification "
                              f"adapters ({loaded})")
        raise UnknownAdapterError(f"model {model!r} not found; use {base_name!r} or a classification adapter "
                                  f"({loaded})")

    def load(self, name: str, path: str | os.PathLike, *, root: str | os.PathLike | None = None,
             reserved: set[str] = frozenset()) -> None:
        """Load the SEQ_CLS adapter at `path` as `name` (statuses as `hotswap.load`'s)."""
        if not isinstance(name, str) or not hotswap.NAME_RE.match(name):
            raise EngineError(f"adapter name {name!r} is invalid: use 1-64 letters, digits, '_' or '-'")
        if name in reserved:
            raise hotswap.AdapterConflictError(f"{name!r} is the base model's name; pick another adapter name")
        target = hotswap.resolve_under(root, str(path))
        if not target.is_dir():
            raise hotswap.AdapterPathNotFoundError(f"adapter directory {str(path)!r} not found under the adapter root")
        with self._lock:  # reading the model's modules while another load replaces them is not safe either
            if name in self._labels:
                raise hotswap.AdapterConflictError(f"an adapter named {name!r} is already loaded; unload it first "
                                                   "or pick another name")
            try:  # refuses a causal-LM adapter, or a head of another number of classes
                if virtual_peft_type(target):
                    config, tensors, _ = read_virtual_folder(self.model, target)
                    labels = read_labels(target, int(self.model.config.num_labels))
                    self._virtual[name] = (config, tensors)
                else:
                    prepared = prepare_adapter(self.model, target, name)
                    labels = read_labels(target, int(self.model.config.num_labels))
                    attach_adapter(self.model, prepared)
            except AdapterLoadError as exc:
                raise hotswap.AdapterIncompatibleError(str(exc)) from None
            self.model.eval()  # new LoRA dropout modules start in training mode
            self._labels[name] = labels

    def unload(self, name: str) -> None:
        """Remove adapter `name` (a classification running with it finishes first)."""
        with self._lock:
            if name not in self._labels:
                raise UnknownAdapterError(f"no adapter named {name!r}; loaded: {', '.join(self._labels) or 'none'}")
            if self._virtual.pop(name, None) is None:
                delete_adapter(self.model, name)
            del self._labels[name]

    def classify(self, name: str | None, rows: list[list[int]]) -> tuple[torch.Tensor, list[str]]:
        """``(logits (len(rows), K), class names)`` of adapter `name` (None: the base's own head)."""
        def chunk(part: list[list[int]]) -> torch.Tensor:
            ids, mask = padded(part, self.pad_id)
            device = next(self.model.parameters()).device
            with torch.inference_mode():
                return self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()

        with self._lock:
            if name is not None and name not in self._labels:
                raise UnknownAdapterError(f"classification adapter {name!r} was unloaded during this request")
            if name is None:
                with disable_adapters(self.model):
                    return in_chunks(rows, chunk), list(self.base_labels or [])
            if name in self._virtual:
                return self._classify_virtual(name, rows, chunk), self._labels[name]
            set_adapter(self.model, name)
            return in_chunks(rows, chunk), self._labels[name]

    def _classify_virtual(self, name: str, rows: list[list[int]], chunk) -> torch.Tensor:
        """`chunk` over `rows` with prefix/prompt classifier `name` attached and every LoRA adapter off
        (under the lock); rows that leave its virtual tokens no room in the position table are refused."""
        config, tensors = self._virtual[name]
        positions = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        longest = max((len(r) for r in rows), default=0)
        if isinstance(positions, int) and longest + config.num_virtual_tokens > positions:
            raise PromptTooLongError(f"an input of {longest} tokens and adapter {name!r}'s "
                                     f"{config.num_virtual_tokens} virtual tokens exceed the model's {positions} "
                                     f"positions; send at most {positions - config.num_virtual_tokens} tokens")
        with disable_adapters(self.model):
            attach_virtual_tensors(self.model, config, tensors, name)
            try:
                return in_chunks(rows, chunk)
            finally:
                remove_virtual_adapter(self.model)


def load_classifier_base(spec, adapter_dirs: list[Path], precision: str = "auto") -> tuple:
    """``(model, tokenizer, own_head, base labels)``: `spec` as a classifier for `lorakit serve`.

    A checkpoint with a classifier head keeps its own (and its labels); another gets a head
    shaped for the first adapter's classes, which that adapter's saved head replaces."""
    from transformers import AutoConfig

    from lorakit.classifier import has_classifier_head, load_classifier
    from lorakit.models import resolve_model
    from lorakit.runtime.precision import hold_base_in

    config = AutoConfig.from_pretrained(str(resolve_model(spec)))
    if has_classifier_head(config):
        model, tok = load_classifier(spec)
        names = [model.config.id2label.get(i, f"LABEL_{i}") for i in range(model.config.num_labels)]
        hold_base_in(model, precision)
        return model, tok, True, names
    if not adapter_dirs:
        raise LorakitError(f"--model {spec}: an encoder without a classifier head cannot generate text or classify; "
                           "give it a classification adapter: --adapter NAME=DIR (from lorakit train --task classify)")
    count = head_classes(adapter_dirs[0], config)
    if count is None:
        raise LorakitError(f"--adapter {adapter_dirs[0]}: no classifier head weights that tell its number of classes "
                           "(is it a classification adapter for this model?)")
    model, tok = load_classifier(spec, count, head_from_adapter=True)
    hold_base_in(model, precision)
    return model, tok, False, None


__all__ = ["ClassifierModel", "adapters", "head_classes", "load_classifier_base", "token_limit"]
