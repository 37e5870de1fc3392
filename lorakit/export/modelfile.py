"""The Ollama `Modelfile` written beside every GGUF export.

Ollama's TEMPLATE is a Go template, not the Jinja chat template a tokenizer carries, and no general
translation exists. The chat formats of the models lorakit ships are recognised by their turn
markers and written as the Go template Ollama's own library uses for them; for any other the
Modelfile says so and Ollama falls back to what it detects from the GGUF's
`tokenizer.chat_template`.
"""

from __future__ import annotations

from pathlib import Path

from lorakit.atomic import atomic_write

_CHATML = ('{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
           '{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
           '<|im_start|>assistant\n')
_GEMMA = ('{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 }}'
          '{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user\n{{ .Content }}<end_of_turn>\n'
          '{{ if $last }}<start_of_turn>model\n{{ end }}'
          '{{- else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}{{ if not $last }}<end_of_turn>\n'
          '{{ end }}{{- end }}{{- end }}')

# marker in the Jinja template -> (Go template, stop strings)
KNOWN_FORMATS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("<|im_start|>", _CHATML, ("<|im_start|>", "<|im_end|>")),
    ("<start_of_turn>", _GEMMA, ("<end_of_turn>",)),
)


def ollama_template(chat_template: str | None) -> tuple[str | None, tuple[str, ...]]:
    """(Go template, stop strings) for a tokenizer's Jinja chat template; (None, ()) if unknown."""
    for marker, template, stops in KNOWN_FORMATS:
        if chat_template and marker in chat_template:
            return template, stops
    return None, ()


def _quote(path: Path | str) -> str:
    text = str(path)
    return f'"{text}"' if any(c.isspace() for c in text) else text


def write_modelfile(out: Path, base: Path | str, adapter: Path | str | None, chat_template: str | None) -> Path:
    """Write `out` (a Modelfile): ``FROM base`` (+ ``ADAPTER adapter``), the chat TEMPLATE and its
    stop PARAMETERs. Paths are written as given (absolute or relative to the Modelfile's folder)."""
    lines = ["# written by lorakit export: ollama create NAME -f Modelfile", f"FROM {_quote(base)}"]
    if adapter is not None:
        lines.append(f"ADAPTER {_quote(adapter)}")
    template, stops = ollama_template(chat_template)
    if template is None:
        lines.append("# chat format not recognised: Ollama uses the template it detects in the GGUF")
    else:
        lines.append(f'TEMPLATE """{template}"""')
        lines += [f'PARAMETER stop "{s}"' for s in stops]
    return atomic_write(out, "\n".join(lines) + "\n")


def modelfile_path(gguf_out: Path) -> Path:
    """Where the Modelfile of an export goes: beside it, named after it (two exports in one folder
    keep one Modelfile each)."""
    return gguf_out.with_name(f"{gguf_out.stem}.Modelfile")
