"""User-facing errors: one clear line that names the file or module and the fix."""


class LorakitError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits 2."""


class AdapterLoadError(LorakitError):
    """An adapter directory or file could not be loaded; the model was left unchanged."""


class ModelNotFoundError(LorakitError):
    """A model name, path or alias could not be resolved."""


def one_line(text: object, limit: int = 300) -> str:
    """`text` as one line of at most `limit` characters: how a library's message is quoted in ours.

    Library messages (YAML marks, safetensors, JSON) may span lines or echo the input; ours are
    one line whatever the input was.
    """
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def short_repr(value: object, limit: int = 60) -> str:
    """A bounded repr of a value read from a file: an alias bomb or a huge number must not grow a message."""
    import reprlib

    shorten = reprlib.Repr()
    shorten.maxstring = shorten.maxother = shorten.maxlong = limit
    shorten.maxlevel, shorten.maxlist, shorten.maxdict = 2, 4, 4
    try:
        text = shorten.repr(value)
    except ValueError:  # an int past Python's int-to-string limit
        text = f"<a {type(value).__name__} too long to print>"
    return one_line(text, limit + 20)
