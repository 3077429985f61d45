"""Fixtures shared by the model-library tests."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one torch thread, restored afterwards.

    Tiny models on a shared 2-core machine: one thread avoids OpenMP barrier stalls
    (measured 5x faster under load). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
