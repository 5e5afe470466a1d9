"""`robodiff bench data|train|inference|sim|latency|compare|bus|record [key=value ...] [--json]`."""

from __future__ import annotations

import importlib

from robodiff.errors import UserError

HELP = """
usage: robodiff bench data|train|inference|sim|latency|compare|bus|record [key=value ...] [--json]

  data       windows per second through the DataLoader (image and low-dim stores) vs a plain
             per-window zarr read
  train      training samples per second (image and low-dim policies) vs a straightforward
             implementation of the same network
  inference  p50/p99 latency of predict_action_chunk at batch 1 (CPU, and CUDA when present)
             vs a straightforward eager implementation
  sim        simulated control steps per second, with and without 96x96 rendering, per task
  latency    a checkpoint's success against inference latency, per executor, on the simulated
             clock (checkpoint=RUN; writes a plot)
  compare    evaluations of the same seeded episodes paired against the first (evals=[A,B,...]):
             success, and each difference with a paired 95 % interval and McNemar's p
  bus        servo bus read+write cycles per second against the bus emulator (clean, damaged
             packets), and how fast a vanished port and a silent servo are reported
  record     leader-follower teleoperation between two bus emulators at 30 Hz, recording two
             640x480 video-file cameras: loop period, save time, memory, follower-leader error

Each writes its figures to stdout; `--json` prints them as one JSON object on the last line.
Keys: see `robodiff/conf/bench_<name>.yaml`.
"""

BENCHES = ("data", "train", "inference", "sim", "latency", "compare", "bus", "record")


def run(args: list[str], overrides: list[str], flags: set[str]) -> dict:
    if len(args) != 1 or args[0] not in BENCHES:
        raise UserError(f"choose one of: {', '.join(BENCHES)} (e.g. `robodiff bench data`)")
    module = importlib.import_module(f"robodiff.bench.{args[0]}")
    return module.run(overrides, flags)
