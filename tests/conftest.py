"""Fixtures and markers shared by several test modules."""

import os

import pytest
import torch
from published_files import start_server

import mobilenets.zoo.download as download_module


def pytest_configure(config):
    # `make test` runs a pytest-xdist worker per core: each worker's torch (and the onnxruntime
    # sessions that follow torch's thread count) takes its share of the cores, so that the
    # workers do not fight over them
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    config.addinivalue_line(
        "markers",
        "slow: starts subprocesses (torchrun, a killed run, the console script, mkdocs, headless "
        "Chromium) or lowers to ExecuTorch; `make test` and CI run them too, `pytest -m 'not "
        "slow'` leaves them out",
    )


def pytest_collection_modifyitems(config, items):
    """The files that hold slow tests first, each file's tests together and in their order:
    `make test` hands whole files to its workers in this order (--no-loadscope-reorder), so the
    long ones start at once and the many short ones fill in at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture(scope="module")
def one_thread():
    """Small nets at small sizes: intra-op threads only fight over a loaded machine's cores (a
    64 px forward measured 2 s on two threads and 18 ms on one), so a module that asks for this
    runs on one thread; the setting is restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def file_server():
    """A local HTTP server for published weights files (published_files.FileServer)."""
    state, stop = start_server()
    yield state
    stop()


@pytest.fixture
def server(file_server, monkeypatch, tmp_path):
    """The module's server, reset; an empty cache; no backoff between retries."""
    file_server.files.clear()
    file_server.requests.clear()
    file_server.drops = 0
    monkeypatch.setenv("MOBILENETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("no_proxy", "*")  # a proxy in the environment must not see 127.0.0.1
    monkeypatch.setattr(download_module, "BACKOFF", 0)
    return file_server
