from pathlib import Path

import pytest

import pyro_vae
from pyro_vae.config import check, load_yaml, resolve
from pyro_vae.data import DATASETS, load_dataset
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.objectives import OBJECTIVES
from pyro_vae.priors import PRIORS
from pyro_vae.registry import check_options, split_spec

CONFIGS = sorted((Path(__file__).parents[1] / "examples" / "configs").glob("*.yaml"))


def test_every_prior_and_likelihood_has_an_example():
    names = {path.stem for path in CONFIGS}
    assert {f"prior-{name}" for name in PRIORS.names()} <= names
    assert {f"likelihood-{name}" for name in LIKELIHOODS.names()} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_example_resolves_and_builds(path):
    config = check(resolve(load_yaml(path)))
    vae = pyro_vae.VAE(data_shape=(1, 8, 8), **config["model"])
    OBJECTIVES.build(config["objective"])
    name, options = split_spec(config["data"], "dataset")
    check_options(DATASETS.get(name), options, f"dataset '{name}'")
    if name == "digits" and config["data"].get("binarize") == "none":  # grey levels as stored
        vae.likelihood.validate(load_dataset(config["data"]).train)
