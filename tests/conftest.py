"""Shared pytest options: heavy checks are opt-in with --runslow."""
import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    # Two cores shared with other processes: OpenMP spin-waiting across 2 threads can make CPU tests 20x slower.
    try:
        import torch
    except ImportError:  # the torch-free runtime's own test environment
        return
    torch.set_num_threads(1)
