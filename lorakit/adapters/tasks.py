"""What an adapter is for (PEFT's `task_type`), and the classifier head a SEQ_CLS adapter saves.

PEFT's sequence-classification adapters (``task_type: "SEQ_CLS"``) train the model's classifier
head in full beside the LoRA factors: its `modules_to_save` holds the head, whose weights are
saved as ``base_model.model.<head>.<param>`` (`lorakit.adapters.io`). PEFT adds its head names
to `modules_to_save` both when it builds such an adapter and when it loads one; lorakit does the
same from the family registry (`lorakit.families`, `cls_heads`), so the files mean one thing in
both. An adapter is refused, in one line, on a model of another task: a classification adapter
on a causal LM has no head to go on, and a causal-LM adapter on a classifier would leave its head
untrained.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from lorakit.adapters.config import LoraConfig
from lorakit.adapters.model import AdapterInfo, add_adapter, plan_targets
from lorakit.errors import AdapterLoadError, LorakitError, short_repr
from lorakit.families import family_for

CAUSAL_LM, SEQ_CLS = "CAUSAL_LM", "SEQ_CLS"
# transformers class-name suffix -> PEFT task_type
_TASKS = (("ForCausalLM", CAUSAL_LM), ("ForSequenceClassification", SEQ_CLS),
          ("ForTokenClassification", "TOKEN_CLS"), ("ForQuestionAnswering", "QUESTION_ANS"))
# what each task's adapter is called in a message, and how to load a base it fits
_WHAT = {CAUSAL_LM: "causal-LM", SEQ_CLS: "sequence-classification", "TOKEN_CLS": "token-classification",
         "QUESTION_ANS": "question-answering"}
_FIX = {
    CAUSAL_LM: "load its base as a causal LM (lorakit.models.load_model), or train a classification adapter",
    SEQ_CLS: "load its base as a classifier: lorakit.classifier.load_classifier(base, labels) "
             "(AutoModelForSequenceClassification, num_labels = the adapter's)",
}


def task_type(model: nn.Module) -> str | None:
    """PEFT's task_type for a transformers model class (None for a bare or multimodal model)."""
    cls = type(model).__name__
    return next((task for suffix, task in _TASKS if cls.endswith(suffix)), None)


def classifier_heads(model: nn.Module) -> list[str]:
    """Names of `model`'s classifier head modules (the registry's `cls_heads` it has), e.g.
    ``["score"]`` for a llama classifier, ``["classifier"]`` for a BERT one. Raises `LorakitError`
    for a model that is not a sequence classifier or has none of them."""
    if task_type(model) != SEQ_CLS:
        raise LorakitError(f"{type(model).__name__} is not a sequence classifier: load it with "
                           "lorakit.classifier.load_classifier(model, labels)")
    names = [n for n in family_for(model).cls_heads if n in model._modules]
    if not names:
        raise LorakitError(f"{type(model).__name__} has none of the classifier heads lorakit knows for its family "
                           f"({', '.join(family_for(model).cls_heads)}): name its head in modules_to_save")
    return names


def with_heads(config: LoraConfig, heads: list[str]) -> LoraConfig:
    """`config` with `heads` appended to its modules_to_save (each name once)."""
    saved = list(config.modules_to_save or [])
    return replace(config, modules_to_save=saved + [h for h in heads if h not in saved])


def classifier_config(model: nn.Module, config: LoraConfig) -> LoraConfig:
    """`config` as PEFT's SEQ_CLS builds it for `model`: the classifier head in modules_to_save.

    Refuses a target inside the head (RoBERTa's ``classifier.dense`` under ``all-linear``): the
    head trains in full, and a LoRA layer inside a fully trained copy has no meaning to save."""
    heads = classifier_heads(model)
    config = with_heads(config, heads)
    targets, _ = plan_targets(model, config)
    inside = next((n for n, _ in targets if any(n.startswith(h + ".") for h in heads)), None)
    if inside is not None:
        raise LorakitError(f"target module '{inside}' is inside the classifier head, which trains in full: name the "
                           "targets (e.g. --targets attention) instead of all-linear")
    return config


def add_classifier_adapter(model: nn.Module, config: LoraConfig, name: str = "default") -> AdapterInfo:
    """Add adapter `name` to a sequence classifier (`lorakit.classifier.load_classifier`): LoRA on
    ``config.target_modules`` and its own trainable copy of the classifier head (PEFT's SEQ_CLS).
    `lorakit.adapters.save_adapter` then writes ``task_type: "SEQ_CLS"`` and the head's weights."""
    return add_adapter(model, classifier_config(model, config), name)


def check_task(model: nn.Module, data: dict, path: Path, ours: str | None = None) -> str | None:
    """The task_type of the adapter config `data` read from `path`; refuses (`AdapterLoadError`,
    naming the folder and the fix) one that is not a string, or not the task of `model` (`ours`: that
    task where the class name does not tell, e.g. GPT-2's LMHeadModel)."""
    task = data.get("task_type")
    if task is not None and not isinstance(task, str):
        raise AdapterLoadError(f"{path / 'adapter_config.json'}: 'task_type' must be a string such as "
                               f"{CAUSAL_LM} or {SEQ_CLS}, got {short_repr(task)}; fix the field or re-save the adapter")
    ours = ours or task_type(model)
    if task in _WHAT and ours is not None and task != ours:
        fix = _FIX.get(task, f"load its base as AutoModel{next(s for s, t in _TASKS if t == task)}")
        raise AdapterLoadError(f"{path}: a {_WHAT[task]} adapter (task_type {task}) cannot load onto "
                               f"{type(model).__name__}, a {_WHAT[ours]} model; {fix}")
    return task


def config_for_model(model: nn.Module, data: dict, config: LoraConfig, tensors: dict[str, torch.Tensor],
                     path: Path, prefix: str) -> LoraConfig:
    """The config an adapter read from `path` loads into `model` with.

    Refuses (`AdapterLoadError`, naming the folder and the fix) an adapter whose task_type is not
    the model's; for a SEQ_CLS adapter, adds the heads its file holds weights for (keys
    ``<prefix><head>.``) to modules_to_save, as PEFT does when it loads one."""
    task = check_task(model, data, path)
    if task != SEQ_CLS or task_type(model) != SEQ_CLS:
        return config
    heads = [h for h in family_for(model).cls_heads if h in model._modules]
    held = [h for h in heads if any(k.startswith(f"{prefix}{h}.") for k in tensors)]
    _check_head_outputs(model, held, tensors, path, prefix)
    return with_heads(config, held)


def _check_head_outputs(model: nn.Module, heads: list[str], tensors: dict[str, torch.Tensor], path: Path,
                        prefix: str) -> None:
    """A saved head with another number of classes than the model's: say so, with the fix (the
    generic shape check would blame a different base model)."""
    labels = getattr(model.config, "num_labels", None)
    for head in heads:
        for key, p in model.get_submodule(head).named_parameters():
            saved = tensors.get(f"{prefix}{head}.{key}")
            if saved is not None and p.shape[:1] == (labels,) and saved.ndim == p.ndim and \
                    saved.shape[1:] == p.shape[1:] and saved.shape[0] != labels:
                raise AdapterLoadError(f"{path}: its classifier head '{head}' has {saved.shape[0]} classes but the "
                                       f"model's has {labels}; load the base with {saved.shape[0]} labels "
                                       "(lorakit.classifier.load_classifier(base, labels))")
