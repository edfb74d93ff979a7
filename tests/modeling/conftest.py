import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """The test machine is shared: keep torch on one intra-op thread."""
    torch.set_num_threads(1)
