"""Shared test settings."""

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # Tests run tiny tensors on a 2-core machine: a second intra-op thread only adds spin-waits
    # (measured 10-20x slower when another process shares the cores), and a fixed thread count keeps
    # float reductions in the same order as in the child processes some tests start.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def pty_pair():
    """(master, slave) of a pseudo-terminal: a terminal for the keyboard teleops."""
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)
