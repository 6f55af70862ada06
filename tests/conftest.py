"""Fixtures shared by several test modules."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Small nets at small sizes: intra-op threads only fight over a loaded machine's cores (a
    64 px forward measured 2 s on two threads and 18 ms on one), so a module that asks for this
    runs on one thread; the setting is restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
