"""User-facing errors: one clear line that names the file or module and the fix."""


class LorakitError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits 2."""


class AdapterLoadError(LorakitError):
    """An adapter directory or file could not be loaded; the model was left unchanged."""


class ModelNotFoundError(LorakitError):
    """A model name, path or alias could not be resolved."""
