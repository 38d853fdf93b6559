import math
import re

import numpy as np
import pytest
import torch

from pyro_vae import VAE, ConfigError, PyroVAEError, log_likelihood, naive_log_likelihood
from pyro_vae.arviz_export import to_inference_data
from pyro_vae.validation import check_bool, check_choice, check_int, check_ints, check_number


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 2.0, "3", None, math.nan, [1]])
def test_check_int_rejects_what_is_not_an_integer(value):
    with pytest.raises(ConfigError, match=re.escape(f"n must be a positive integer, got {value!r}.")):
        check_int(value, "n")


@pytest.mark.parametrize("value", [3, np.int64(3), np.uint8(3), torch.tensor(3).item()])
def test_check_int_accepts_python_and_numpy_integers_as_int(value):
    result = check_int(value, "n")
    assert result == 3 and type(result) is int


def test_check_int_bounds_none_and_message():
    assert check_int(0, "seed", minimum=0) == 0
    assert check_int(None, "chunk_size", allow_none=True) is None
    with pytest.raises(ConfigError, match=re.escape("chunk_size must be a positive integer, got None.")):
        check_int(None, "chunk_size")
    with pytest.raises(ConfigError, match=re.escape("option 'val_size' of dataset 'mnist' must be an "
                                                    "integer >= 0, got -5.")):
        check_int(-5, "option 'val_size' of dataset 'mnist'", minimum=0)
    with pytest.raises(ConfigError, match=re.escape("seed must be an integer in [0, 9], got 10.")):
        check_int(10, "seed", minimum=0, maximum=9)
    with pytest.raises(ConfigError, match=re.escape("levels must be an integer >= 2, got 1.")):
        check_int(1, "levels", minimum=2)


def test_check_ints_takes_one_integer_or_a_list():
    assert check_ints(4, "latent_dim") == (4,)
    assert check_ints([2, np.int64(3)], "latent_dim") == (2, 3)
    assert check_ints([], "hidden", allow_empty=True) == ()
    for bad in ([], [2, 0], [True], 2.5, None, "8"):
        with pytest.raises(ConfigError, match=re.escape(f"latent_dim must be a positive integer or a list of "
                                                        f"them, got {bad!r}.")):
            check_ints(bad, "latent_dim")
    with pytest.raises(ConfigError, match="a list of 2 of them"):
        check_ints([1, 2, 3], "size", length=2)


def test_check_number_bounds_and_non_finite_values():
    assert check_number(np.float32(0.5), "lr", greater_than=0) == 0.5
    assert check_number(3, "beta", minimum=0) == 3.0 and type(check_number(3, "beta")) is float
    assert check_number(None, "clip_norm", allow_none=True) is None
    assert check_number(math.inf, "clip_norm", greater_than=0, finite=False) == math.inf
    cases = [
        (math.nan, {"finite": False}, "x must be a number, got nan."),
        (math.inf, {}, "x must be a finite number, got inf."),
        (0, {"greater_than": 0}, "x must be a finite number > 0, got 0."),
        (-1, {"minimum": 0}, "x must be a finite number >= 0, got -1."),
        (1, {"minimum": 0, "less_than": 1}, "x must be a number in [0, 1), got 1."),
        (0.0, {"greater_than": 0, "maximum": 1}, "x must be a number in (0, 1], got 0.0."),
        (True, {}, "x must be a finite number, got True."),
        ("1", {}, "x must be a finite number, got '1'."),
        (None, {}, "x must be a finite number, got None."),
    ]
    for value, bounds, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_number(value, "x", **bounds)


def test_check_bool_and_check_choice():
    assert check_bool(np.bool_(False), "dequantize") is False
    for bad in (1, "yes", None):
        with pytest.raises(ConfigError, match=re.escape(f"dequantize must be true or false, got {bad!r}.")):
            check_bool(bad, "dequantize")
    assert check_choice("rgb", "mode", ("grayscale", "rgb")) == "rgb"
    with pytest.raises(ConfigError, match=re.escape("mode must be one of 'grayscale', 'rgb', got 'rbg'. "
                                                    "Did you mean 'rgb'?")):
        check_choice("rbg", "mode", ("grayscale", "rgb"))
    with pytest.raises(ConfigError, match="got True"):
        check_choice(True, "n", (1, 2))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_a_bad_num_samples_is_the_same_error_everywhere(bad):
    from pyro_vae.estimators import ImportanceSampling  # what distributed.sharded_estimate runs

    vae = VAE(data_shape=4, latent_dim=2)
    x = torch.ones(3, 4)
    calls = [
        lambda: log_likelihood(vae.model, vae.guide, x, num_samples=bad),
        lambda: naive_log_likelihood(vae.model, x, num_samples=bad),
        lambda: to_inference_data(vae, x, num_samples=bad),
        lambda: ImportanceSampling(num_samples=bad),
    ]
    messages = set()
    for call in calls:
        with pytest.raises(PyroVAEError) as error:
            call()
        assert type(error.value) is ConfigError
        messages.add(str(error.value))
    assert messages == {f"num_samples must be a positive integer, got {bad!r}."}
