"""`EpisodeRecorder`: episodes streamed into a store while they are recorded.

The control loop hands each step to `add`, which never waits on disk: a writer thread appends the
steps to the store's arrays as an uncommitted tail (data first, shape after; images in blocks of
`IMAGE_BLOCK` frames, a chunk each, the other arrays in blocks of `LOWDIM_BLOCK` rows), so that when the episode
ends only what is still queued and the commit record are left to write: `commit()` takes well
under a second however long the episode was, and memory holds the queue and one block per array,
never the episode. Readers ignore the tail until `commit()` writes `meta/episode_ends` (the
store's protocol, `EpisodeStore.commit_tail`); a process killed mid-episode loses that episode
and nothing else (the next writer, or `dataset validate --repair`, drops the tail).

Bounded memory has a price when the disk is slower than the robot for long: once `max_queue_bytes`
of steps wait, `add` blocks until the writer catches up (counted in `stats()["recorder_waits"]`)
rather than drop a frame.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from robodiff.data.store import EpisodeStore, append_data_first
from robodiff.errors import StoreError

IMAGE_BLOCK = 4  # frames of an image array written at a time (a chunk each, encoded side by side)
LOWDIM_BLOCK = 256  # rows of a low-dim array written at a time (a chunk is rewritten per block)
MAX_QUEUE_BYTES = 512 * 1024 * 1024  # ~9 s of two 640x480 cameras at 30 Hz
_FLUSH, _STOP = "flush", "stop"


class EpisodeRecorder:
    """`add(step)` per step, then `commit()` (or `discard()`) per episode; `close()` at the end."""

    def __init__(self, store: EpisodeStore, max_queue_bytes: int = MAX_QUEUE_BYTES) -> None:
        self.store = store
        self.max_queue_bytes = int(max_queue_bytes)
        self._arrays = {key: store.array(key) for key in store.keys}  # opened here, written there
        self._block = {key: IMAGE_BLOCK if f.kind == "image" else LOWDIM_BLOCK for key, f in store.features.items()}
        self._queue: queue.Queue[Any] = queue.Queue()
        self._room = threading.Condition()
        self._queued_bytes = 0
        self._error: BaseException | None = None
        self._length = 0
        self.waits = 0
        self._thread = threading.Thread(target=self._write, name="episode-writer", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        """Steps of the episode in progress."""
        return self._length

    def add(self, step: Mapping[str, Any]) -> None:
        self._raise_writer_error()
        if self._length == 0:
            self.store.begin_episode()  # the writer is idle between episodes: drop any old tail
        row = {}
        for key, feature in self.store.features.items():
            if key not in step:
                raise StoreError(f"{self.store.path}: step is missing '{key}'")
            value = np.array(step[key], dtype=feature.dtype)  # a copy: the caller may reuse its buffers
            if value.shape != feature.shape:
                raise StoreError(f"{self.store.path}: '{key}' has shape {list(value.shape)} per step, "
                                 f"the store expects {list(feature.shape)}")
            row[key] = value
        size = sum(v.nbytes for v in row.values())
        with self._room:
            if self._queued_bytes + size > self.max_queue_bytes:
                self.waits += 1
                self._room.wait_for(lambda: self._queued_bytes + size <= self.max_queue_bytes
                                    or self._error is not None)
            self._queued_bytes += size
        self._queue.put(row)
        self._length += 1

    def flush(self) -> None:
        """Wait until every step added so far is in the store (as its uncommitted tail)."""
        self._queue.put(_FLUSH)
        self._queue.join()
        self._raise_writer_error()

    def commit(self) -> int:
        """The episode in progress becomes the store's next episode; its index."""
        self.flush()
        index = self.store.commit_tail(self._length)
        self._length = 0
        return index

    def discard(self) -> None:
        """Drop the episode in progress (its tail is truncated)."""
        self.flush()
        if self._length:
            self.store.repair()
        self._length = 0

    def close(self) -> None:
        """Stop the writer; an episode in progress stays an uncommitted tail."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def stats(self) -> dict[str, int]:
        return {"recorder_waits": self.waits}

    # ---- the writer thread ---------------------------------------------------------------------
    def _raise_writer_error(self) -> None:
        if self._error is not None:
            self._queue.join()  # what was queued behind the failure is dropped before anyone goes on
            error, self._error = self._error, None
            self._length = 0
            reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
            raise StoreError(f"{self.store.path}: writing the episode in progress failed ({reason}); it is "
                             f"lost, the {self.store.n_episodes} committed episodes are intact") from None

    def _write(self) -> None:
        pending: dict[str, list[np.ndarray]] = {key: [] for key in self._arrays}
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if item is _FLUSH:
                    for key in pending:
                        self._write_block(key, pending[key])
                    continue
                for key, value in item.items():
                    pending[key].append(value)
                    if len(pending[key]) >= self._block[key]:
                        self._write_block(key, pending[key])
            except BaseException as exc:  # noqa: BLE001 - reported on the caller's thread
                for rows in pending.values():
                    rows.clear()
                self._error = exc
            finally:
                if isinstance(item, dict):
                    with self._room:
                        self._queued_bytes -= sum(v.nbytes for v in item.values())
                        self._room.notify_all()
                self._queue.task_done()

    def _write_block(self, key: str, rows: list[np.ndarray]) -> None:
        if self._error is None and rows:
            append_data_first(self._arrays[key], np.stack(rows))
        rows.clear()
