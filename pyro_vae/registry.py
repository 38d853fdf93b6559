"""Name -> constructor registries, so that configs can name parts and users can add their own.

A *spec* is either a name (``"bernoulli"``) or a mapping with a ``name`` key and the
constructor's keyword options (``{"name": "mlp", "hidden": [400]}``).

Parts are built with a :class:`BuildContext`: what the library knows when it builds them
(the training-set size, the data shape, the device, the splits a command needs). A
constructor that declares a ``context`` parameter receives it; one that does not never
sees it, so existing parts need no change when the context grows.
"""

import difflib
import inspect
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class BuildContext:
    """What a part's constructor may use (each field ``None`` where it is not known).

    Attributes:
        num_train: number of training points (e.g. for β-TCVAE's minibatch-weighted sampling).
        data_shape: shape of one data point.
        device: the ``torch.device`` the run computes on.
        splits: the data splits the caller needs; a dataset may skip reading the others
            (e.g. ``pyro-vae evaluate`` needs only ``("test",)``).
    """

    num_train: int | None = None
    data_shape: tuple | None = None
    device: Any = None
    splits: tuple = SPLITS


def suggest(word, choices):
    """Return ``" Did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" Did you mean '{match[0]}'?" if match else ""


class Registry:
    """A named collection of constructors (classes or functions) of one kind of part.

    >>> PRIORS = Registry("prior")
    >>> @PRIORS.register("standard-normal")
    ... class StandardNormal: ...
    """

    def __init__(self, kind):
        self.kind = kind
        self._entries = {}

    def register(self, name, constructor=None):
        """Register ``constructor`` under ``name``; usable as a decorator."""
        if constructor is None:
            return lambda c: self.register(name, c)
        self._entries[name] = constructor
        return constructor

    def names(self):
        return sorted(self._entries)

    def __contains__(self, name):
        return name in self._entries

    def get(self, name):
        """The constructor registered as ``name``; unknown names list the valid ones."""
        if name not in self._entries:
            raise ConfigError(
                f"Unknown {self.kind} '{name}'.{suggest(name, self._entries)} "
                f"Valid {self.kind}s: {', '.join(self.names())}."
            )
        return self._entries[name]

    def build(self, spec, context=None, offered=None, **supplied):
        """Build from a spec (name or ``{"name": ..., **options}``).

        ``supplied`` holds arguments the library passes to every constructor of this kind
        (such as ``latent_dim``); ``offered`` (a dict) and ``context`` (a
        :class:`BuildContext`) are passed only to a constructor with a parameter of that name
        (e.g. ``num_samples`` to the estimators that take one). The spec's options must be
        keyword arguments the constructor accepts; none of the names the library passes may
        be one.
        """
        name, options = split_spec(spec, self.kind)
        constructor = self.get(name)
        params = inspect.signature(constructor).parameters
        offered = {"context": context or BuildContext(), **(offered or {})}
        passed = {**supplied, **{k: v for k, v in offered.items() if k in params}}
        check_options(constructor, options, f"{self.kind} '{name}'", reserved={*passed, "context"})
        return constructor(**passed, **options)


def split_spec(spec, kind):
    """``"name"`` or ``{"name": ..., **options}`` -> ``(name, options)``."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict):
        if "name" not in spec:
            raise ConfigError(f"A {kind} given as a mapping needs a 'name' key, got {spec!r}.")
        if not isinstance(spec["name"], str):
            raise ConfigError(f"The name of a {kind} must be a string, got {spec['name']!r}.")
        options = {k: v for k, v in spec.items() if k != "name"}
        return spec["name"], options
    raise ConfigError(f"A {kind} must be a name or a mapping with a 'name' key, got {spec!r}.")


def check_options(constructor, options, what, reserved=()):
    """Reject options that ``constructor`` does not accept, listing the ones it does."""
    params = inspect.signature(constructor).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        _check_required(params, options, what, reserved)
        return
    valid = [
        n
        for n, p in params.items()
        if n not in reserved and n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL
    ]
    for key in options:
        if key in reserved:
            raise ConfigError(f"Option '{key}' of {what} is set by the library; remove it.")
        if key not in valid:
            listed = ", ".join(valid) if valid else "none"
            raise ConfigError(
                f"Unknown option '{key}' for {what}.{suggest(key, valid)} Valid options: {listed}."
            )
    _check_required(params, options, what, reserved)


def _check_required(params, options, what, reserved):
    """Name the options without a default that the spec leaves out (e.g. a dataset's path)."""
    missing = [
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty and n not in reserved and n not in options and n != "self"
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    if missing:
        needed = ", ".join(f"'{n}'" for n in missing)
        raise ConfigError(f"The {what} needs the option{'s' if len(missing) > 1 else ''} {needed}.")
