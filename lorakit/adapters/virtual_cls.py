"""Prefix and prompt tuning on a sequence classifier: the head that trains beside the virtual tokens.

PEFT's ``PeftModelForSequenceClassification`` with a prompt-learning config trains the classifier
head in full next to the virtual tokens (its `modules_to_save`) and saves the head's weights as
``base_model.<head>.<param>`` beside ``prompt_embeddings`` (prompt learning wraps the transformers
model directly, so there is no ``.model.`` as in a LoRA file). Here the head is wrapped in
`ModulesToSave`, as a LoRA SEQ_CLS adapter wraps it: the base's own head is kept and comes back when
the adapter is removed.

Where the classifier reads its token (peft/peft_model.py, ``PeftModelForSequenceClassification``):

* BERT-family encoders pool the first position inside the backbone; with prompt tuning that is the
  first virtual token, as in PEFT.
* Decoders score the last token that is not padding, found in ``input_ids``. PEFT hands the model
  ``inputs_embeds`` for prompt tuning, so transformers cannot see the padding and pools the last
  position, a pad token on a right-padded row (its own warning says so). lorakit leaves
  ``input_ids`` with the classifier and drops the N virtual positions from the backbone's output,
  so the head reads the last real token on every row: PEFT's numbers wherever PEFT's pooling lands
  on a real token (rows without padding, or left-padded ones).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lorakit.adapters.modules_to_save import ModulesToSave
from lorakit.adapters.tasks import SEQ_CLS, classifier_heads, task_type
from lorakit.errors import AdapterLoadError

HEAD_PREFIX = "base_model."  # PEFT's key prefix of a prompt-learning adapter's saved head
REPLACED = "lorakit_replaced"  # __dict__ key, on a head wrapper, of the module it stands in for


def wrap_heads(model: nn.Module, name: str, trainable: bool) -> tuple[str, ...]:
    """Give a sequence classifier's heads a copy for adapter `name` (trainable or not); returns their
    names, () for a causal LM."""
    if task_type(model) != SEQ_CLS:
        return ()
    heads = tuple(classifier_heads(model))
    for head in heads:
        held = model._modules[head]  # a LoRA classifier's wrapper, where one is loaded (a server's base)
        wrapper = ModulesToSave.from_base(held.original_module if isinstance(held, ModulesToSave) else held, name)
        wrapper.modules_to_save[name].requires_grad_(trainable)
        wrapper.__dict__[REPLACED] = held  # not a submodule: the state dict holds the head once
        model._modules[head] = wrapper
    return heads


def unwrap_heads(model: nn.Module, heads: tuple[str, ...]) -> None:
    """Put back the modules `wrap_heads` replaced."""
    for head in heads:
        wrapper = model._modules[head]
        if isinstance(wrapper, ModulesToSave) and REPLACED in wrapper.__dict__:
            model._modules[head] = wrapper.__dict__[REPLACED]


def head_state(model: nn.Module, name: str, heads: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Adapter `name`'s heads as PEFT saves them: ``base_model.<head>.<param>`` -> tensor (on the CPU)."""
    return {f"{HEAD_PREFIX}{head}.{key}": p.detach().to("cpu").contiguous()
            for head in heads for key, p in model._modules[head].adapter_parameters(name).items()}


def head_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The keys and shapes a prompt-learning SEQ_CLS file holds for `model`'s heads (none for an LM)."""
    if task_type(model) != SEQ_CLS:
        return {}
    shapes = {}
    for head in classifier_heads(model):
        module = model._modules[head]
        module = module.original_module if isinstance(module, ModulesToSave) else module
        shapes.update({f"{HEAD_PREFIX}{head}.{key}": tuple(p.shape) for key, p in module.named_parameters()})
    return shapes


def check_head_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], weights: Path) -> None:
    """Refuse (one line naming `weights`) a SEQ_CLS file whose head keys or shapes are not `model`'s;
    a head with another number of classes says how to load the base for it."""
    want = head_shapes(model)
    missing = sorted(set(want) - set(tensors))
    if missing:
        raise AdapterLoadError(f"{weights}: no {missing[0]}: a sequence-classification prefix/prompt adapter holds "
                               "its classifier head; re-save the adapter")
    labels = getattr(model.config, "num_labels", None)
    for key, shape in want.items():
        saved = tuple(tensors[key].shape)
        if saved == shape:
            continue
        if saved[1:] == shape[1:] and shape[:1] == (labels,):
            raise AdapterLoadError(f"{weights}: its classifier head has {saved[0]} classes but the model's has "
                                   f"{labels}; load the base with {saved[0]} labels "
                                   "(lorakit.classifier.load_classifier(base, labels))")
        raise AdapterLoadError(f"{weights}: {key} has shape {saved} but the model needs {shape}; use the base model "
                               "it was trained for")


def load_heads(model: nn.Module, name: str, heads: tuple[str, ...], tensors: dict[str, torch.Tensor]) -> None:
    """Copy the saved heads (checked by `check_head_tensors`) into adapter `name`'s copies."""
    with torch.no_grad():
        for head in heads:
            for key, p in model._modules[head].adapter_parameters(name).items():
                p.copy_(tensors[f"{HEAD_PREFIX}{head}.{key}"].to(p.dtype))


def drop_virtual_outputs(backbone: nn.Module, args: tuple, kwargs: dict, output):
    """Forward hook on a prompt-tuned classifier's backbone: its last hidden state without the N
    virtual positions, so a decoder's head pools by ``input_ids`` (module docstring)."""
    record = backbone.__dict__["lorakit_virtual"]
    output.last_hidden_state = output.last_hidden_state[:, record.num_virtual_tokens:]
    return output


drop_virtual_outputs.lorakit_virtual_hook = True  # `virtual.remove_virtual_adapter` removes it (virtual_hook's mark)
