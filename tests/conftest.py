"""Shared test settings."""

import os
import signal

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


def _terminal_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def terminal_sigint():
    """Ctrl-C as a terminal delivers it, here and in the children started with the returned
    `preexec_fn`. A shell that starts jobs in the background sets SIGINT to ignored, and Python
    keeps an inherited SIG_IGN: without this, tests of Ctrl-C fail only when run that way."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield _terminal_sigint
    signal.signal(signal.SIGINT, previous)
