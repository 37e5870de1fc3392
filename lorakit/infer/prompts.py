"""Turn OpenAI-style prompts and chat messages into token ids."""

from __future__ import annotations

from lorakit.errors import LorakitError
from lorakit.infer.limits import check_prompt_chars
from lorakit.infer.request import PromptTooLongError

ROLES = ("system", "user", "assistant")


def check_text(text: str, where: str) -> str:
    """`text`, if the tokenizer can take it: JSON's escapes can spell unpaired surrogates, which
    are not Unicode text and make the tokenizer raise."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LorakitError(f"{where} holds an unpaired surrogate ({text[exc.start]!r} at character {exc.start}); "
                           "send valid Unicode text") from None
    return text


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
        out.append({"role": msg["role"], "content": check_text(message_text(msg["content"]), f"messages[{i}]")})
    return out


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer carries a chat template (instruct models do)."""
    return bool(getattr(tokenizer, "chat_template", None))


def encode_chat(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `messages` in the model's chat template, ending with the assistant's turn opened."""
    if not has_chat_template(tokenizer):
        raise LorakitError("this model has no chat template; use /v1/completions (or --prompt) with plain text")
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except TemplateError as exc:  # a template's raise_exception(): e.g. roles that must alternate
        raise LorakitError(f"the model's chat template refused these messages: {exc}") from None
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
        return tokenizer(check_text(prompt, "prompt")).input_ids
    vocab = len(tokenizer)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                                                    for t in prompt):
        return list(prompt)
    raise LorakitError("prompt must be a string (or a list of token ids); batches of prompts are not supported, "
                       "send one request per prompt")


def encode_checked(tokenizer, max_context: int, per_token: int, *, prompt=None, messages=None) -> list[int]:
    """Token ids of a completion `prompt` or of chat `messages`, refusing first, without tokenizing,
    what cannot fit in `max_context` tokens (`per_token`: see `limits.max_token_chars`).

    The server runs this in a thread: tokenizing a long text takes a while and must not hold
    the event loop.
    """
    if messages is not None:
        normalized = normalize_messages(messages)
        # the template only adds text around the contents, so the contents alone bound the tokens
        check_prompt_chars(sum(len(m["content"]) for m in normalized), max_context, per_token)
        return encode_chat(tokenizer, normalized)
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        check_prompt_chars(len(prompt), max_context, per_token)
    elif isinstance(prompt, list) and len(prompt) >= max_context and all(isinstance(t, int) for t in prompt[:1]):
        raise PromptTooLongError(f"the prompt has {len(prompt)} tokens but the context holds {max_context}; "
                                 "shorten the prompt")
    return encode_prompt(tokenizer, prompt)
