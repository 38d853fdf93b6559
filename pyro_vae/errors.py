"""Exceptions that carry a message meant for the user.

The command line turns :class:`PyroVAEError` into a one-paragraph message on stderr and
exit status 2; Python callers can catch it (it subclasses :class:`ValueError`). Every
exception and warning class of the library is defined here.
"""


class PyroVAEError(ValueError):
    """Bad input: a wrong name, option, shape, value or file, explained in words."""


class ConfigError(PyroVAEError):
    """A configuration that cannot be resolved (unknown key, name or invalid value)."""


class DataError(PyroVAEError):
    """Data that is missing, malformed or outside a likelihood's support."""


class RunError(PyroVAEError):
    """A run directory that does not exist, holds no run, or cannot be written."""


class CheckpointError(RunError):
    """A checkpoint file that cannot be read, or that does not fit the run's model."""


class TrainingDiverged(Exception):
    """Training stopped because its loss diverged: NaN or infinite, or exploded far above the
    run's recent losses (``train.divergence_factor``, see :mod:`pyro_vae.trainer`).

    Not bad input, so not a :class:`PyroVAEError`: the command line prints its message and
    exits with status 3. The message names the likely cause and the last good checkpoint,
    which is kept (the diverged epoch is never saved).
    """


class EstimatorWarning(UserWarning):
    """An estimate of log p(x) that its own diagnostics do not endorse."""


class ImportanceSamplingWarning(EstimatorWarning):
    """Pareto :math:`\\hat k` says the importance-sampling estimate is unreliable."""
