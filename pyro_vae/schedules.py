"""β schedules, chosen by name: training progress t (in epochs) -> β.

The trainer assigns ``vae.beta = schedule(t)`` before each step (t is fractional within
an epoch); the VAE applies it as ``poutine.scale(scale=β)`` on the latent sites of model
and guide (``poutine.mask(False)`` when β = 0), so the step optimises
E_q[log p(x|z)] − β(t)·KL. ``beta`` (and ``start``) may be one number or one per latent
layer; a schedule's shape f(t) ∈ [0, 1] then applies to every layer:

* ``constant``: β(t) = beta;
* ``linear`` (KL warm-up): β(t) = start + (beta − start)·min(1, t / warmup_epochs);
* ``cyclical`` (Fu et al. 2019): t is cut into cycles of ``cycle_epochs``; within a
  cycle β rises linearly from 0 to ``beta`` over the first fraction ``ratio`` of the
  cycle and stays there: β(t) = beta·min(1, (t mod L) / (ratio·L)).
"""

from .errors import ConfigError
from .registry import Registry
from .validation import check_number

BETA_SCHEDULES = Registry("beta schedule")


def _non_negative(value, what):
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError(f"{what} must not be an empty list.")
        return tuple(_non_negative(v, what) for v in value)
    return check_number(value, f"beta schedule option {what!r} (or each entry of its list)", minimum=0)


def _interpolate(start, end, fraction):
    """start + (end − start)·fraction, elementwise when either is per layer."""
    if isinstance(start, tuple) or isinstance(end, tuple):
        starts = start if isinstance(start, tuple) else (start,) * len(end)
        ends = end if isinstance(end, tuple) else (end,) * len(start)
        if len(starts) != len(ends):
            raise ConfigError(f"start and beta have different lengths: {start} and {end}.")
        return [s + (e - s) * fraction for s, e in zip(starts, ends)]
    return start + (end - start) * fraction


@BETA_SCHEDULES.register("constant")
class Constant:
    """β(t) = beta."""

    def __init__(self, beta=1.0):
        self.beta = _non_negative(beta, "beta")

    def __call__(self, t):
        return _interpolate(self.beta, self.beta, 1.0)


@BETA_SCHEDULES.register("linear")
class LinearWarmup:
    """β(t) = start + (beta − start)·min(1, t / warmup_epochs): the KL warm-up."""

    def __init__(self, beta=1.0, start=0.0, warmup_epochs=10):
        self.beta = _non_negative(beta, "beta")
        self.start = _non_negative(start, "start")
        self.warmup_epochs = check_number(warmup_epochs, "beta schedule option 'warmup_epochs'",
                                          greater_than=0)
        _interpolate(self.start, self.beta, 0.0)

    def __call__(self, t):
        return _interpolate(self.start, self.beta, min(1.0, t / self.warmup_epochs))


@BETA_SCHEDULES.register("cyclical")
class Cyclical:
    """β(t) = beta·min(1, (t mod L)/(ratio·L)) with L = ``cycle_epochs`` (Fu et al. 2019)."""

    def __init__(self, beta=1.0, cycle_epochs=10, ratio=0.5):
        self.beta = _non_negative(beta, "beta")
        self.cycle_epochs = check_number(cycle_epochs, "beta schedule option 'cycle_epochs'", greater_than=0)
        self.ratio = check_number(ratio, "beta schedule option 'ratio'", greater_than=0, maximum=1)

    def __call__(self, t):
        phase = (t % self.cycle_epochs) / self.cycle_epochs
        return _interpolate(0.0, self.beta, min(1.0, phase / self.ratio))
