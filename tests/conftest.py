import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Each test starts with an empty param store and a fixed seed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def single_thread():
    """One torch thread: the tensors of the estimator tests are tiny, and intra-op threads
    only add wake-up latency on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
