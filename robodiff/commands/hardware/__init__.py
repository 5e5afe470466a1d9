"""`robodiff hardware emulate|calibrate|find-port|setup-motors [key=value ...] [--json]`."""

from __future__ import annotations

import importlib
import select
import sys

from robodiff.errors import UserError

HELP = """
usage: robodiff hardware emulate robot=R link=PATH [arm=follower|leader] [corrupt_rate=P] [drop_rate=P]
                                 [disconnect_after_s=S] [silent=MOTOR] [person=none|calibration|teleop]
                                 [trajectory=STORE] [--json]
       robodiff hardware calibrate robot=R arm=follower|leader [port=PATH] [robot.<key>=...] [--json]
       robodiff hardware find-port [--json]
       robodiff hardware setup-motors robot=R [arm=follower|leader] [port=PATH] [--json]

  emulate       a pseudo-terminal at PATH that answers like the arm's servos (Feetech protocol, byte
                for byte), its joints simulated by the arm's MuJoCo model; runs until Ctrl-C. The
                driver, calibration and every command run against it as against the real arm.
  calibrate     walks you through calibrating one arm in the terminal (middle pose, then every
                joint through its range); writes offsets and limits to the servos and a JSON per
                arm id in your calibration directory (docs/formats.md)
  find-port     which port is the arm: unplug its USB cable when asked
  setup-motors  gives each new servo its id and baud rate, one servo at a time (gripper first)

Keys: robodiff/conf/hardware_<name>.yaml. docs/deployment.md walks through setting up an arm.
"""

# subcommand -> module in this package
SUBCOMMANDS = {"emulate": "emulate", "calibrate": "calibrate", "find-port": "find_port",
               "setup-motors": "setup_motors"}


def module(name: str):
    return importlib.import_module(f"robodiff.commands.hardware.{SUBCOMMANDS[name]}")


def run(args: list[str], overrides: list[str], flags: set[str]) -> dict:
    if len(args) != 1 or args[0] not in SUBCOMMANDS:
        raise UserError(f"choose one of: {', '.join(SUBCOMMANDS)} (e.g. `robodiff hardware find-port`)")
    return module(args[0]).run(overrides, flags)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wait_for_enter(message: str) -> None:
    """Tell the person what to do; return when they press Enter (a line on stdin)."""
    say(message)
    if not sys.stdin.readline():
        raise UserError("stdin closed: this step needs a person at the terminal to press Enter")


def enter_pressed() -> bool:
    """Whether a line came in on stdin since the last look (never waits)."""
    if select.select([sys.stdin], [], [], 0)[0]:
        if not sys.stdin.readline():
            raise UserError("stdin closed: this step needs a person at the terminal to press Enter")
        return True
    return False
