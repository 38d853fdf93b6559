"""Declarative run configuration: defaults, YAML files, ``key=value`` overrides, validation.

A config is a nested mapping. Sections with fixed keys (the top level, ``model``,
``optim``, ``train``, ``eval``) reject unknown keys with a suggestion; the values that
name a part (``data``, ``objective``, ``beta_schedule``, ``eval.estimator`` and the model's
``prior``, ``likelihood``, ``encoder``, ``decoder``, ``latent_network``) are specs, a name or
``{"name": ..., **options}``, checked against their registries when the run is built.
"""

import copy
import re

import yaml

from .errors import ConfigError
from .registry import suggest
from .validation import check_bool, check_int, check_number, is_integer

DEFAULTS = {
    "seed": 0,
    "device": "auto",
    "data": {"name": "digits", "binarize": "dynamic"},
    "model": {
        "latent_dim": 8,
        "prior": "standard-normal",
        "likelihood": "bernoulli",
        "encoder": {"name": "mlp", "hidden": [128], "activation": "relu"},
        "decoder": {"name": "mlp", "hidden": [128], "activation": "relu"},
        "latent_network": {"name": "mlp", "hidden": [100, 100], "activation": "tanh", "batch_norm": True,
                           "zero_init_head": True},
        "inference": "residual",
        "skip_connections": False,
        "conditional_variance": "unit",
    },
    "objective": {"name": "elbo", "num_particles": 1},
    "beta_schedule": {"name": "constant", "beta": 1.0},
    "optim": {"lr": 3e-3, "lr_decay": 1.0, "lr_milestones": None, "clip_norm": None, "eps": 1e-8},
    # train.divergence_factor: training stops (TrainingDiverged) when a step's loss per data point
    # exceeds m + divergence_factor * max(|m|, 1), m the median of the last 50 checked per-point
    # losses (see pyro_vae.trainer); null turns this check off (NaN/inf still stop training).
    "train": {"epochs": 40, "batch_size": 64, "validate_every": 1, "mixed_precision": None,
              "divergence_factor": 100.0},
    "eval": {"estimator": "importance", "num_samples": 1000, "batch_size": 100},
    # tracking: copies of metrics.jsonl in TensorBoard / MLflow (optional extras; see pyro_vae.tracking)
    "tracking": {"tensorboard": False, "mlflow": False, "mlflow_uri": None, "mlflow_experiment": "pyro-vae",
                 "images_every": 5},
}

SPEC_KEYS = {
    "data", "objective", "beta_schedule", "prior", "likelihood", "encoder", "decoder", "latent_network",
    "estimator",
}


def merge(base, overrides, path=""):
    """``base`` updated with ``overrides``; unknown keys of fixed sections are rejected."""
    merged = copy.deepcopy(base)
    if not isinstance(overrides, dict):
        raise ConfigError(f"Config section '{path or '<top>'}' must be a mapping, got {overrides!r}.")
    for key, value in overrides.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in merged:
            raise ConfigError(
                f"Unknown config key '{where}'.{suggest(key, merged)} "
                f"Valid keys{' of ' + path if path else ''}: {', '.join(sorted(merged))}."
            )
        if key in SPEC_KEYS:
            merged[key] = _merge_spec(merged[key], value)
        elif isinstance(merged[key], dict):
            merged[key] = merge(merged[key], value, where)
        else:
            merged[key] = value
    return merged


def _merge_spec(default, value):
    """A spec override: same name keeps the default options, a new name starts afresh."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"A part must be a name or a mapping with a 'name' key, got {value!r}.")
    default = {"name": default} if isinstance(default, str) else default
    if value.get("name", default["name"]) != default["name"]:
        return dict(value)
    return {**default, **value}


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading ``1e-4`` (no dot, as in YAML 1.2) as a float, and
    refusing duplicate keys."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _mapping_without_duplicates(loader, node, deep=False):
    """A YAML mapping, refusing a key given twice (PyYAML would keep the last silently)."""
    loader.flatten_mapping(node)
    first = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in first:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given on line {first[key]})", key_node.start_mark)
        first[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_yaml(path):
    """Read a YAML config file with the safe loader; errors name the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            content = yaml.load(handle, Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError(f"Config file '{path}' does not exist.") from None
    except IsADirectoryError:
        raise ConfigError(f"Config file '{path}' is a directory, not a YAML file.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Config file '{path}' is not a text (UTF-8) file.") from None
    except OSError as error:
        raise ConfigError(f"Config file '{path}' cannot be read: {error.strerror or error}.") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"Config file '{path}' is not valid YAML: {error}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping, got {type(content).__name__}.")
    return content


def parse_option(text, example="num_steps=1000", what="option"):
    """``"key=value"`` -> ``(key, value)``, the value parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"An {what} must look like key=value (e.g. {example}), got {text!r}.")
    try:
        return key, yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError:
        raise ConfigError(f"The value in {what} {text!r} is not valid YAML.") from None


def parse_override(text):
    """``"model.latent_dim=16"`` -> ``{"model": {"latent_dim": 16}}`` (value parsed as YAML)."""
    key, value = parse_option(text, "train.epochs=5", "override")
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def stored_run_defaults():
    """The defaults a stored run's ``config.yaml`` is read against: :data:`DEFAULTS`, except
    that an option added after runs were written takes the value that keeps those runs as
    they were trained (a stored config holds every key, so only older runs lack one):
    ``batch_norm`` and ``zero_init_head`` of the latent networks, on by default since they
    came, were off before; the guide of a hierarchy was ``bottom-up`` before ``residual``
    became the default, and the variance of p(z_l | z_{l+1}) was learned before ``unit``."""
    return merge(DEFAULTS, {"model": {"latent_network": {"batch_norm": False, "zero_init_head": False},
                                      "inference": "bottom-up", "conditional_variance": "learned"}})


def resolve(user_config=None, overrides=(), base=DEFAULTS):
    """The full config: ``base`` (the defaults), then ``user_config``, then ``key=value`` overrides."""
    config = merge(base, user_config or {})
    for text in overrides:
        config = merge(config, parse_override(text))
    return config


def _check_milestones(milestones):
    """``None``, or a non-empty increasing list of epochs >= 1."""
    ok = milestones is None or (
        isinstance(milestones, list) and milestones
        and all(is_integer(m) and m >= 1 for m in milestones)
        and all(a < b for a, b in zip(milestones, milestones[1:]))
    )
    if not ok:
        raise ConfigError(
            "optim.lr_milestones must be null (lr_decay every epoch) or an increasing list of epochs "
            f">= 1 after which the learning rate is multiplied by lr_decay, got {milestones!r}."
        )


def check(config):
    """Validate the plain values of a resolved config (parts are checked by their registries)."""
    check_int(config["seed"], "seed", minimum=0, maximum=2**32 - 1)
    if not isinstance(config["device"], str):
        raise ConfigError(f"device must be a string, got {config['device']!r}.")
    optim, train, evaluation = config["optim"], config["train"], config["eval"]
    check_number(optim["lr"], "optim.lr", greater_than=0)
    check_number(optim["lr_decay"], "optim.lr_decay (factor per epoch, or per milestone)",
                 greater_than=0, maximum=1)
    _check_milestones(optim["lr_milestones"])
    check_number(optim["clip_norm"], "optim.clip_norm", greater_than=0, finite=False, allow_none=True)
    check_number(optim["eps"], "optim.eps (Adam's ε)", greater_than=0, finite=False)
    check_number(train["divergence_factor"], "train.divergence_factor (null turns the check off)",
                 greater_than=0, allow_none=True)
    if train["mixed_precision"] not in (None, "bf16"):
        raise ConfigError(
            "train.mixed_precision must be null (full precision) or bf16 (the networks in bfloat16 "
            f"under torch.autocast), got {train['mixed_precision']!r}. float16 needs loss scaling, "
            "which the trainer does not do; bf16 has float32's range and needs none."
        )
    for section, key in [
        ("train", "epochs"),
        ("train", "batch_size"),
        ("train", "validate_every"),
        ("eval", "num_samples"),
        ("eval", "batch_size"),
    ]:
        check_int({"train": train, "eval": evaluation}[section][key], f"{section}.{key}")
    _check_tracking(config["tracking"])
    return config


def _check_tracking(tracking):
    """The ``tracking`` section: two switches, an optional URI, a name and an image interval."""
    for backend in ("tensorboard", "mlflow"):
        check_bool(tracking[backend], f"tracking.{backend}")
    for key, allow_none in (("mlflow_uri", True), ("mlflow_experiment", False)):
        value = tracking[key]
        if not (isinstance(value, str) and value) and not (allow_none and value is None):
            raise ConfigError(f"tracking.{key} must be a {'URI string or null' if allow_none else 'name'}, "
                              f"got {value!r}.")
    check_int(tracking["images_every"], "tracking.images_every (epochs between images; 0: none)", minimum=0)
