"""Progress bars that suit where they are written: live on a terminal; in a log file or a pipe,
one plain line every `LOG_INTERVAL_S` seconds and none at all for work shorter than that (tqdm's
carriage-return redraws would otherwise put every update of a long run on one ever-growing line,
and a command that fails at once would print a bar before its one-line error)."""

from __future__ import annotations

import re
import sys
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


# Cursor movements tqdm writes for nested bars (a rollout's bar inside training's).
_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Lines:
    """A stream that turns tqdm's `\\r`-redrawn status into whole lines."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        line = _ESCAPES.sub("", text).replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(tqdm):
    """A bar in a log: a new postfix or description waits for the next line instead of writing
    one at once (tqdm redraws on every `set_postfix` by default)."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        super().set_description(desc, refresh=False)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(iterable: Any = None, file: TextIO | None = None, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, **kwargs)` on stderr (or `file`), redrawn live on a terminal and written
    as a line every LOG_INTERVAL_S seconds (and at the end) anywhere else."""
    stream = file if file is not None else sys.stderr
    if _is_terminal(stream):
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    kwargs.update(mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S, delay=LOG_INTERVAL_S, ncols=100)
    return _LogBar(iterable, file=_Lines(stream), **kwargs)
