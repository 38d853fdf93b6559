"""β schedules, chosen by name: training progress t (in epochs) -> β.

The trainer assigns ``vae.beta = schedule(t)`` before each step (t is fractional within
an epoch); the VAE applies it as ``poutine.scale(scale=β)`` on the latent sites of model
and guide (``poutine.mask(False)`` when β = 0), so the step optimises
E_q[log p(x|z)] − β(t)·KL. ``beta`` (and ``start``) may be one number or one per latent
layer; a schedule's shape f(t) ∈ [0, 1] then applies to every layer:

* ``constant``: β(t) = beta;
* ``linear`` (KL warm-up): β(t) = start + (beta − start)·min(1, t / warmup_epochs);
  ``warmup_epochs`` may also be one number per layer (layer 1 first): a per-layer warm-up,
  e.g. ``warmup_epochs: [10, 20]`` brings the top layer's KL in over twice as many epochs
  (Sønderby et al. 2016 warm up all layers together; a list of equal entries does that);
* ``cyclical`` (Fu et al. 2019): t is cut into cycles of ``cycle_epochs``; within a
  cycle β rises linearly from 0 to ``beta`` over the first fraction ``ratio`` of the
  cycle and stays there: β(t) = beta·min(1, (t mod L) / (ratio·L)).

The same schedules give the other numbers that follow training progress, one number each
(:func:`scalar_schedule`): the capacity C(t) of the ``capacity`` objective and the free
bits λ(t) of ``elbo`` and ``elbo-analytic``.
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
    """start + (end − start)·fraction, elementwise when any of them is per layer."""
    values = (start, end, fraction)
    lengths = {len(v) for v in values if isinstance(v, tuple)}
    if not lengths:
        return start + (end - start) * fraction
    if len(lengths) > 1:
        raise ConfigError(f"The per-layer lists of the beta schedule (start, beta, warmup_epochs) have "
                          f"different lengths: {sorted(lengths)}; give one entry per latent layer.")
    depth = lengths.pop()
    starts, ends, fractions = (v if isinstance(v, tuple) else (v,) * depth for v in values)
    return [s + (e - s) * f for s, e, f in zip(starts, ends, fractions)]


def scalar_schedule(spec, what, context=None):
    """t -> one number, from ``spec``: a number ≥ 0 (constant) or a schedule spec, e.g.
    ``{name: linear, start: 1.0, beta: 0.0, warmup_epochs: 50}`` (1 at t = 0, down to 0 at
    t = 50); ``what`` names the option in errors. Per-layer lists are refused."""
    if not isinstance(spec, (str, dict)):
        spec = {"name": "constant", "beta": check_number(spec, what, minimum=0)}
    schedule = BETA_SCHEDULES.build(spec, context)
    if isinstance(schedule(0.0), list):
        raise ConfigError(f"{what} must be one number, not one per layer.")
    return schedule


@BETA_SCHEDULES.register("constant")
class Constant:
    """β(t) = beta."""

    def __init__(self, beta=1.0):
        self.beta = _non_negative(beta, "beta")

    def __call__(self, t):
        return _interpolate(self.beta, self.beta, 1.0)


@BETA_SCHEDULES.register("linear")
class LinearWarmup:
    """β(t) = start + (beta − start)·min(1, t / warmup_epochs): the KL warm-up (per layer when
    any of ``beta``, ``start``, ``warmup_epochs`` is a list)."""

    def __init__(self, beta=1.0, start=0.0, warmup_epochs=10):
        self.beta = _non_negative(beta, "beta")
        self.start = _non_negative(start, "start")
        what = "beta schedule option 'warmup_epochs' (or each entry of its list)"
        if isinstance(warmup_epochs, (list, tuple)) and warmup_epochs:
            self.warmup_epochs = tuple(check_number(w, what, greater_than=0) for w in warmup_epochs)
        else:
            self.warmup_epochs = check_number(warmup_epochs, what, greater_than=0)
        self(0.0)

    def __call__(self, t):
        if isinstance(self.warmup_epochs, tuple):
            return _interpolate(self.start, self.beta, tuple(min(1.0, t / w) for w in self.warmup_epochs))
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
