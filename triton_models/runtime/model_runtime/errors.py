"""The one base of this package's errors. The platform's own handlers catch them by their concrete classes."""


class ModelRuntimeError(Exception):
    """A packaged model is missing or cannot be loaded, or a request asks for what a model cannot do."""
