"""Sequence-classification adapters served on the generation base the engine runs.

A PEFT SEQ_CLS adapter for a decoder holds LoRA factors for the backbone and a ``score`` head
(its modules_to_save). transformers' decoder classifiers put that head on the very backbone the
causal LM has, under the same module names, and read it at the last token that is not padding.
So the factors join the engine's model as one more adapter (each batch row picks its adapter by
name, so generation rows never run them) and the head stays here: a classification is the
engine's backbone under the adapter's rows, then the head on the pooled hidden state.

Files are read and checked on the caller's thread; inserting the factors and every
classification forward run on the engine's worker thread between two decode steps
(`Engine.post` / `Engine.call`), so weights never change under a running forward. A forward
takes at most `MAX_ROWS` texts, so running streams move between the chunks of a large request.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lorakit.adapters import adapter_rows, adapters
from lorakit.adapters.io import CONFIG_NAME, LABELS_NAME, PREFIX, attach_adapter, prepare_adapter, read_adapter_weights
from lorakit.adapters.model import AdapterInfo
from lorakit.adapters.tasks import SEQ_CLS
from lorakit.classifier import label_maps
from lorakit.errors import AdapterLoadError, LorakitError, short_repr
from lorakit.families import family_for
from lorakit.infer import hotswap
from lorakit.infer.engine import Engine
from lorakit.infer.request import EngineError, UnknownAdapterError

MAX_ROWS = 16            # texts per classification forward: the engine's decode waits for each one
CALL_TIMEOUT_S = 300.0   # how long a classification waits for the engine's worker (a long prefill ahead)


def adapter_task(folder: str | os.PathLike) -> str | None:
    """The `task_type` an adapter folder's adapter_config.json states (None when unreadable)."""
    try:
        data = json.loads((Path(folder) / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    task = data.get("task_type") if isinstance(data, dict) else None
    return task if isinstance(task, str) else None


def is_classification_adapter(root: str | os.PathLike | None, path: str | os.PathLike) -> bool:
    """Whether `path` (under `root`, see `hotswap.resolve_under`) holds a SEQ_CLS adapter; False
    for anything unreadable, so that the generation loader reports what is wrong with it."""
    try:
        target = hotswap.resolve_under(root, str(path))
    except LorakitError:
        return False
    return adapter_task(target) == SEQ_CLS


def read_labels(folder: Path, count: int) -> list[str]:
    """Class names of the adapter in `folder` whose head has `count` outputs: its labels.json
    (``lorakit.adapters.io.LABELS_NAME``), else transformers' ``LABEL_0`` .. ``LABEL_{count-1}``."""
    path = folder / LABELS_NAME
    if not path.is_file():
        return list(label_maps(count)[0].values())
    try:
        id2label = json.loads(path.read_text(encoding="utf-8"))["id2label"]
        names = [id2label[str(i)] for i in range(len(id2label))]
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        raise hotswap.AdapterIncompatibleError(f"{path}: not an {{\"id2label\": {{\"0\": NAME, ...}}}} object; "
                                               "re-save the adapter or delete the file") from None
    if len(names) != count:
        raise hotswap.AdapterIncompatibleError(f"{path}: {len(names)} class names for a head of {count} outputs; "
                                               "re-save the adapter")
    try:
        return list(label_maps(names)[0].values())
    except LorakitError as exc:
        raise hotswap.AdapterIncompatibleError(f"{path}: {exc}") from None


def pad_id_of(tokenizer, config) -> int | None:
    """The id a classifier pools past: the tokenizer's pad id, else the config's (as
    `lorakit.classifier.load_classifier` sets it, so the head reads the token it was trained on)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(config.get_text_config(), "pad_token_id", None)
    return None if pad is None else int(pad)


def padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` (B, T): `rows` right-padded with `pad_id` to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return ids, mask


def last_token(input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Per row of `input_ids` (B, T), the position of its rightmost token that is not `pad_id`
    (0 for a row of padding only): where transformers' decoder classifiers read their head."""
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
    return (positions * (input_ids != pad_id)).argmax(-1)


def in_chunks(rows: list[list[int]], run) -> torch.Tensor:
    """``run(chunk)`` (logits (b, K)) over `rows` in chunks of `MAX_ROWS`, by length (less
    padding), the results put back in the order of `rows`: (len(rows), K)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out: list[torch.Tensor | None] = [None] * len(rows)
    for start in range(0, len(order), MAX_ROWS):
        part = order[start:start + MAX_ROWS]
        for i, logits in zip(part, run([rows[i] for i in part])):
            out[i] = logits
    return torch.stack(out)


def shares_backbone(model: nn.Module) -> str | None:
    """Why `model` (a causal LM) cannot take classification adapters on its backbone; None if it can.

    It can when its family's classifier head is ``score`` alone (the family registry: the
    decoders, whose transformers classifier reads that head at the last non-pad token) and the
    backbone sits under the model's `base_model_prefix`, as in that classifier."""
    heads = family_for(model).cls_heads
    prefix = getattr(model, "base_model_prefix", "")
    if tuple(heads) != ("score",):
        return (f"{type(model).__name__} has no decoder classifier head (its family's heads: {', '.join(heads)}); "
                "serve the classifier itself: lorakit serve --model BASE --adapter NAME=DIR with no generation adapter")
    if not prefix or not isinstance(getattr(model, prefix, None), nn.Module):
        return f"{type(model).__name__} has no backbone under base_model_prefix {prefix!r}"
    return None


class _Classifier(nn.Module):
    """The engine's backbone (the same module object, so one set of weights) beside a head: the
    module names of transformers' decoder classifier, which an adapter's keys are written for."""

    def __init__(self, prefix: str, backbone: nn.Module, head_name: str, head: nn.Module, config) -> None:
        super().__init__()
        self.add_module(prefix, backbone)
        self.add_module(head_name, head)
        self.config = config  # target matching reads the model type from it, never the weights


@dataclass
class _Entry:
    view: _Classifier
    head_name: str
    labels: list[str]
    info: AdapterInfo | None = None   # the engine's registry entry once attached (identity = still loaded)
    head: nn.Module | None = None


class SharedBaseClassifiers:
    """The classification adapters on `engine`'s model (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.model = engine, engine.model
        self.tokenizer = engine.tokenizer
        self.max_tokens = engine.max_context
        self.pad_id = pad_id_of(self.tokenizer, self.model.config)
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    # -- what is loaded (any thread) -------------------------------------------------------
    def _live(self, name: str) -> _Entry | None:
        entry = self._entries.get(name)
        if entry is None:
            return None
        if entry.info is None:  # its attach is queued
            return entry if name in self.engine.pending else None
        return entry if adapters(self.model).get(name) is entry.info else None

    def is_classifier(self, name: str | None) -> bool:
        """Whether `name` is a classification adapter loaded (or being loaded) now."""
        return name is not None and self._live(name) is not None

    def names(self) -> tuple[str, ...]:
        """Classification adapters requests may name now (not those being unloaded)."""
        return tuple(n for n in self.engine.adapter_names() if self.is_classifier(n) and n not in self.engine.draining)

    def resolve(self, model: str, base_name: str) -> str:
        """The classification adapter a /classify request's `model` names; the base (a causal LM,
        with no classifier head) and generation adapters are refused (400), other names are 404."""
        if self.is_classifier(model) and model not in self.engine.draining:
            return model
        loaded = ", ".join(self.names()) or "none loaded"
        if model == base_name:
            raise EngineError(f"model {model!r} is the generation base, not a classifier; name a classification "
                              f"adapter ({loaded})")
        if model in self.engine.adapter_names():
            raise EngineError(f"model {model!r} is a generation adapter: send it to /v1/completions or "
                              f"/v1/chat/completions; classification adapters: {loaded}")
        raise UnknownAdapterError(f"model {model!r} not found; classification adapters: {loaded}")

    # -- loading (caller's thread; the insert on the engine's) -------------------------------
    def load(self, name: str, path: str | os.PathLike, *, root: str | os.PathLike | None = None,
             reserved: set[str] = frozenset()) -> None:
        """Load the SEQ_CLS adapter at `path` as `name`; returns once requests may use it.
        Raises `EngineError` subclasses (HTTP statuses) as `hotswap.load` does."""
        hotswap.check_name(self.engine, name, set(reserved))
        target = hotswap.resolve_under(root, str(path))
        if not target.is_dir():
            raise hotswap.AdapterPathNotFoundError(f"adapter directory {str(path)!r} not found under the adapter root")
        why = shares_backbone(self.model)
        if why is not None:
            raise hotswap.AdapterIncompatibleError(f"{target}: a classification adapter cannot run on this base: {why}")
        if self.pad_id is None:
            raise hotswap.AdapterIncompatibleError(f"{target}: the base has no pad token (tokenizer or config.json), "
                                                   "which a classifier pools past; set pad_token_id in its config.json")
        view, head_name, count = self._view_for(target)
        try:  # every check of the files against the backbone, as for any adapter; the model is only read
            prepared = prepare_adapter(view, target, name)
        except AdapterLoadError as exc:
            raise hotswap.AdapterIncompatibleError(str(exc)) from None
        extra = [n for n, _ in prepared.plan[1] if n != head_name]
        if extra:
            raise hotswap.AdapterIncompatibleError(
                f"{target}: it trains {extra[0]} in full (modules_to_save), a module the generation adapters share; "
                "serve it on a classifier base of its own (lorakit serve --model BASE --adapter NAME=DIR)")
        entry = _Entry(view, head_name, read_labels(target, count))

        def attach() -> None:  # worker thread: the model changes only here
            info = attach_adapter(view, prepared)  # wraps the shared backbone's modules in place
            # the engine's registry is what batch rows, unload and the adapter list read: the LoRA
            # part joins it; the head stays with the entry
            del adapters(view)[name]
            entry.info = adapters(self.model)[name] = AdapterInfo(config=info.config, modules=list(info.modules))
            entry.head = view.get_submodule(head_name).modules_to_save[name]
            view.eval()  # new LoRA dropout modules start in training mode

        with self._lock:
            self._entries = {n: e for n, e in self._entries.items() if self._live(n) is not None}
            self._entries[name] = entry
        try:
            self.engine.post(attach, adds=name).result(CALL_TIMEOUT_S)
        except ValueError as exc:  # the name was taken while this thread read the files
            self._forget(name, entry)
            raise hotswap.AdapterConflictError(str(exc)) from None
        except AdapterLoadError as exc:
            self._forget(name, entry)
            raise hotswap.AdapterIncompatibleError(str(exc)) from None
        except BaseException:
            self._forget(name, entry)
            raise

    def _forget(self, name: str, entry: _Entry) -> None:
        with self._lock:
            if self._entries.get(name) is entry:
                del self._entries[name]

    def _view_for(self, folder: Path) -> tuple[_Classifier, str, int]:
        """The backbone with a head shaped as the adapter's saved one: ``(view, head name, classes)``."""
        head_name = family_for(self.model).cls_heads[0]
        try:
            tensors = read_adapter_weights(folder)
        except AdapterLoadError as exc:
            raise hotswap.AdapterIncompatibleError(str(exc)) from None
        key = f"{PREFIX}{head_name}."
        head = {k[len(key):]: t for k, t in tensors.items() if k.startswith(key)}
        weight = head.get("weight")
        hidden = self.model.config.get_text_config().hidden_size
        if weight is None or weight.ndim != 2 or weight.shape[1] != hidden or weight.shape[0] < 2 \
                or set(head) - {"weight", "bias"}:
            got = short_repr({k: tuple(t.shape) for k, t in head.items()})
            raise hotswap.AdapterIncompatibleError(
                f"{folder}: its classifier head '{head_name}' is not a linear map from the base's {hidden} hidden "
                f"units to 2 or more classes (found {got}); was it trained for this base?")
        device = next(self.model.parameters()).device
        linear = nn.Linear(hidden, weight.shape[0], bias="bias" in head, device=device, dtype=torch.float32)
        prefix = self.model.base_model_prefix
        return _Classifier(prefix, getattr(self.model, prefix), head_name, linear, self.model.config), head_name, \
            weight.shape[0]

    # -- classifying (caller's thread; the forwards on the engine's) --------------------------
    def classify(self, name: str, rows: list[list[int]]) -> tuple[torch.Tensor, list[str]]:
        """``(logits (len(rows), K), class names)`` of adapter `name` for token-id rows (each non-empty)."""
        entry = self._live(name)
        if entry is None or name in self.engine.draining:
            raise UnknownAdapterError(f"no classification adapter named {name!r}; loaded: "
                                      f"{', '.join(self.names()) or 'none'}")
        if entry.info is None:
            self.engine.call(lambda: None, CALL_TIMEOUT_S)  # its attach is queued ahead: let it land

        def chunk(part: list[list[int]]) -> torch.Tensor:
            ids, mask = padded(part, self.pad_id)
            return self.engine.call(lambda: self._forward(name, entry, ids, mask), CALL_TIMEOUT_S)

        return in_chunks(rows, chunk), entry.labels

    def _forward(self, name: str, entry: _Entry, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Worker thread: the backbone under `name`'s rows, the head at each row's last token."""
        if self._live(name) is not entry or entry.head is None:
            raise UnknownAdapterError(f"classification adapter {name!r} was unloaded during this request")
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        backbone = getattr(self.model, self.model.base_model_prefix)
        with torch.inference_mode(), adapter_rows(self.model, [name] * len(ids)):
            hidden = backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            pooled = hidden[torch.arange(len(ids), device=device), last_token(ids, self.pad_id)]
            head = entry.head
            return head(pooled.to(head.weight.dtype)).float().cpu()
