"""Fixtures and markers shared by several test modules."""

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: starts subprocesses (torchrun, a killed run, the console script, mkdocs) or lowers "
        "to ExecuTorch; `make test` and CI run them too, `pytest -m 'not slow'` leaves them out",
    )


@pytest.fixture(scope="module")
def one_thread():
    """Small nets at small sizes: intra-op threads only fight over a loaded machine's cores (a
    64 px forward measured 2 s on two threads and 18 ms on one), so a module that asks for this
    runs on one thread; the setting is restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
