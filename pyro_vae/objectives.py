"""Training objectives (Pyro ELBOs) and β schedules, chosen by name.

Objectives (``max_plate_nesting=1``: the data plate; particles are vectorised):

* ``elbo``: :class:`pyro.infer.Trace_ELBO`, Monte Carlo KL;
* ``elbo-analytic``: :class:`pyro.infer.TraceMeanField_ELBO`, closed-form
  KL(q ‖ p) where the prior allows it (Pyro falls back to Monte Carlo otherwise);
* ``iwae``: :class:`pyro.infer.RenyiELBO` with α = 0, the importance-weighted bound
  log (1/K) Σ_k p(x, z_k)/q(z_k|x) with K = ``num_particles`` (default 5).

β schedules map training progress t (in epochs, fractional within an epoch) to the
β that the trainer assigns to ``vae.beta`` before each step; the VAE applies it as
``poutine.scale(scale=β)`` on the latent sites of model and guide
(``poutine.mask(False)`` when β = 0):

* ``constant``: β(t) = ``beta``;
* ``linear`` (KL warm-up): β(t) = start + (beta − start)·min(1, t / warmup_epochs);
* ``cyclical`` (Fu et al. 2019): t is cut into cycles of ``cycle_epochs``; within a
  cycle β rises linearly from 0 to ``beta`` over the first fraction ``ratio`` of the
  cycle and stays there: β(t) = beta·min(1, (t mod L) / (ratio·L)).
"""

from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from .errors import ConfigError
from .registry import Registry

OBJECTIVES = Registry("objective")
BETA_SCHEDULES = Registry("beta schedule")


def _particles(num_particles):
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ConfigError(f"num_particles must be a positive integer, got {num_particles!r}.")
    return dict(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=1,
    )


@OBJECTIVES.register("elbo")
def elbo(num_particles=1):
    """The ELBO with a Monte Carlo KL term (``Trace_ELBO``)."""
    return Trace_ELBO(**_particles(num_particles))


@OBJECTIVES.register("elbo-analytic")
def elbo_analytic(num_particles=1):
    """The ELBO with the KL term in closed form where possible (``TraceMeanField_ELBO``)."""
    return TraceMeanField_ELBO(**_particles(num_particles))


@OBJECTIVES.register("iwae")
def iwae(num_particles=5):
    """The importance-weighted bound with K = ``num_particles`` (``RenyiELBO(alpha=0)``)."""
    return RenyiELBO(alpha=0, **_particles(num_particles))


def _non_negative(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{what} must be a number >= 0, got {value!r}.")
    return float(value)


def _positive(value, what):
    if _non_negative(value, what) == 0:
        raise ConfigError(f"{what} must be > 0, got {value!r}.")
    return float(value)


@BETA_SCHEDULES.register("constant")
class Constant:
    """β(t) = beta."""

    def __init__(self, beta=1.0):
        self.beta = _non_negative(beta, "beta")

    def __call__(self, t):
        return self.beta


@BETA_SCHEDULES.register("linear")
class LinearWarmup:
    """β(t) = start + (beta − start)·min(1, t / warmup_epochs): the KL warm-up."""

    def __init__(self, beta=1.0, start=0.0, warmup_epochs=10):
        self.beta = _non_negative(beta, "beta")
        self.start = _non_negative(start, "start")
        self.warmup_epochs = _positive(warmup_epochs, "warmup_epochs")

    def __call__(self, t):
        return self.start + (self.beta - self.start) * min(1.0, t / self.warmup_epochs)


@BETA_SCHEDULES.register("cyclical")
class Cyclical:
    """β(t) = beta·min(1, (t mod L)/(ratio·L)) with L = ``cycle_epochs`` (Fu et al. 2019)."""

    def __init__(self, beta=1.0, cycle_epochs=10, ratio=0.5):
        self.beta = _non_negative(beta, "beta")
        self.cycle_epochs = _positive(cycle_epochs, "cycle_epochs")
        self.ratio = _positive(ratio, "ratio")
        if self.ratio > 1:
            raise ConfigError(f"ratio must be in (0, 1], got {ratio!r}.")

    def __call__(self, t):
        phase = (t % self.cycle_epochs) / self.cycle_epochs
        return self.beta * min(1.0, phase / self.ratio)
