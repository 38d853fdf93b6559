"""Exceptions that carry a message meant for the user.

The command line turns :class:`PyroVAEError` into a one-paragraph message on stderr and
exit status 2; Python callers can catch it (it subclasses :class:`ValueError`).
"""


class PyroVAEError(ValueError):
    """Bad input: a wrong name, option, shape, value or file, explained in words."""


class ConfigError(PyroVAEError):
    """A configuration that cannot be resolved (unknown key, name or invalid value)."""


class DataError(PyroVAEError):
    """Data that is missing, malformed or outside a likelihood's support."""
