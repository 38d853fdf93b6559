"""Training objectives (Pyro ELBOs), chosen by name.

Objectives (``max_plate_nesting=1``: the data plate; particles are vectorised):

* ``elbo``: :class:`pyro.infer.Trace_ELBO`, Monte Carlo KL;
* ``elbo-analytic``: :class:`pyro.infer.TraceMeanField_ELBO`, closed-form
  KL(q ‖ p) where the prior allows it (Pyro falls back to Monte Carlo otherwise);
* ``iwae``: :class:`pyro.infer.RenyiELBO` with α = 0, the importance-weighted bound
  log (1/K) Σ_k p(x, z_k)/q(z_k|x) with K = ``num_particles`` (default 5).
"""

from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from .errors import ConfigError
from .registry import Registry

OBJECTIVES = Registry("objective")


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


def check_compatible(spec, vae):
    """Reject ``elbo-analytic`` where its closed-form KL would be wrong.

    ``TraceMeanField_ELBO`` computes KL(q(z_l|·) ‖ p(z_l|·)) site by site, which is the
    ELBO's latent term only when the guide samples the layers in the model's order
    (top-down). A bottom-up guide draws z_{l+1} after z_l and from it, so the analytic
    per-site KL would be biased.
    """
    name = spec if isinstance(spec, str) else spec.get("name")
    if name == "elbo-analytic" and len(vae.latent_dims) > 1 and vae.inference != "top-down":
        raise ConfigError(
            "elbo-analytic needs the guide to sample latent layers in the model's order: use "
            "model.inference: top-down with a hierarchy, or the objective 'elbo' or 'iwae'."
        )
