"""A new training objective that needs the training-set size: one factory, registered by name.

    python examples/custom_objective.py        # 2 epochs on the embedded digits

``dataset-elbo`` is the ELBO of the whole training set estimated from a batch of B points,
(N / B) · ELBO(batch), the form stochastic variational inference writes down (Hoffman et
al. 2013) and the one objectives such as β-TCVAE's minibatch-weighted sampling build on.
It needs N, the training-set size: the factory declares a ``context`` parameter and the
library passes it a :class:`~pyro_vae.registry.BuildContext` (``context.num_train``,
``context.data_shape``, ``context.device``). Factories without that parameter never see it.
"""

import argparse
import tempfile

import pyro_vae
from pyro_vae.objectives import OBJECTIVES, TraceELBO
from pyro_vae.rundir import RunDir


class DatasetELBO(TraceELBO):
    """(N / B) times the batch's negative ELBO."""

    def __init__(self, num_train, **options):
        super().__init__(**options)
        self.num_train = num_train

    def differentiable_loss(self, model, guide, x):
        return super().differentiable_loss(model, guide, x) * (self.num_train / len(x))


@OBJECTIVES.register("dataset-elbo")
def dataset_elbo(context, num_particles=1):
    """The training set's ELBO from a batch, (N / B) · ELBO(batch); N from the build context."""
    return DatasetELBO(context.num_train, num_particles=num_particles, max_plate_nesting=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        run = pyro_vae.train({"train": {"epochs": args.epochs}, "objective": "dataset-elbo"}, folder,
                             progress=False)
        records = RunDir(folder).read_metrics()
    num_train = len(run.splits.train)
    print(f"trained on N = {num_train}: training loss per point (scaled by N/B) "
          f"{records[-1]['train_loss']:.1f}, validation ELBO {records[-1]['val_elbo']:.2f}")
    return run, records


if __name__ == "__main__":
    main()
