import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The model runs with one intra-op thread everywhere (spec section 9)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
