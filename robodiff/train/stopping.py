"""How a training run stops early: on a non-finite loss (an error, before anything bad is saved)
or on Ctrl-C / SIGTERM (a checkpoint of the step reached, then a clean exit)."""

from __future__ import annotations

import math
import signal
import sys
import threading
from typing import Any

import torch

from robodiff.errors import UserError


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; nothing was saved after it did."""


class LossWindow:
    """The per-step losses since the last log line, kept on the device: reading them is one host
    sync per check instead of one per step."""

    def __init__(self, size: int, device: torch.device):
        self.values = torch.zeros(size, dtype=torch.float32, device=device)
        self.first_step = 0  # the step of values[0]
        self.count = 0
        self.checked = 0  # values[:checked] are known finite

    def add(self, step: int, loss: torch.Tensor) -> None:
        if self.count == 0:
            self.first_step = step
        self.values[self.count] = loss.detach().float()
        self.count += 1

    def first_bad(self) -> tuple[int, float] | None:
        """(step, value) of the first non-finite loss not yet checked; None when all are finite."""
        if self.count == self.checked:
            return None
        new = self.values[self.checked:self.count].cpu()
        bad = torch.nonzero(~torch.isfinite(new)).flatten()
        if len(bad):
            i = int(bad[0])
            return self.first_step + self.checked + i, float(new[i])
        self.checked = self.count
        return None

    def take_mean(self) -> float:
        mean = float(self.values[:self.count].double().mean()) if self.count else math.nan
        self.count = self.checked = 0
        return mean


def parameters_finite(params: list[torch.Tensor]) -> bool:
    return bool(torch.stack([torch.isfinite(p.detach()).all() for p in params]).all())


class StopRequest:
    """Ctrl-C or SIGTERM (torchrun forwards both; a cluster's preemption sends SIGTERM) asks the
    loop to stop after the step under way; a second Ctrl-C aborts at once without saving."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handler = signal.getsignal(sig)
                if handler is not None:
                    self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            self.uninstall()
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step "
              f"(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def ignore_interrupts(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the training process, which saves before it exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
