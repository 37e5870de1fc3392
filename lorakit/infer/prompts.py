"""Turn OpenAI-style prompts and chat messages into token ids."""

from __future__ import annotations

from lorakit.errors import LorakitError

ROLES = ("system", "user", "assistant")


def message_text(content) -> str:
    """A message's text: a string, or OpenAI's list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise LorakitError("message content must be a string or a list of {\"type\": \"text\", \"text\": ...} parts")


def normalize_messages(messages) -> list[dict[str, str]]:
    """Check chat messages and reduce them to ``{"role", "content"}`` with string content."""
    if not isinstance(messages, list) or not messages:
        raise LorakitError("messages must be a non-empty list of {\"role\", \"content\"} objects")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES or "content" not in msg:
            raise LorakitError(f"messages[{i}] must have a role ({', '.join(ROLES)}) and a content")
        out.append({"role": msg["role"], "content": message_text(msg["content"])})
    return out


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer carries a chat template (instruct models do)."""
    return bool(getattr(tokenizer, "chat_template", None))


def encode_chat(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `messages` in the model's chat template, ending with the assistant's turn opened."""
    if not has_chat_template(tokenizer):
        raise LorakitError("this model has no chat template; use /v1/completions (or --prompt) with plain text")
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # the template already holds any BOS/turn markers: add nothing more
    return tokenizer(text, add_special_tokens=False).input_ids


def encode_request(tokenizer, text: str) -> list[int]:
    """A user request as the model expects it: its chat template when it has one, else plain text."""
    if has_chat_template(tokenizer):
        return encode_chat(tokenizer, [{"role": "user", "content": text}])
    return tokenizer(text).input_ids


def encode_prompt(tokenizer, prompt) -> list[int]:
    """Token ids of a completion prompt: a string, a one-string list, or a list of token ids."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return tokenizer(prompt).input_ids
    vocab = len(tokenizer)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                                                    for t in prompt):
        return list(prompt)
    raise LorakitError("prompt must be a string (or a list of token ids); batches of prompts are not supported, "
                       "send one request per prompt")
