"""`robodiff <command> [args] key=value ... [--json]`.

Each command lives in `robodiff/commands/<name>.py` with `HELP` (text) and
`run(args, overrides, json_mode) -> dict`. With `--json` the returned dict is printed as the last
line of stdout (strict JSON: a NaN or infinite figure is `null`); human output goes before it or
to stderr. User errors print one line on stderr and exit 2 (with `--json`, `{"error": ...}` too).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Any

from robodiff import __version__, jsonio
from robodiff.errors import UserError

COMMANDS: dict[str, str] = {
    "collect": "record demonstrations from a teleop device or a scripted expert",
    "dataset": "inspect, validate, import and view episode stores",
    "train": "train a policy on an episode store",
    "distill": "distil a diffusion policy into a student that samples in 1-4 steps",
    "eval": "evaluate a policy in simulation (success rate, score, videos)",
    "deploy": "run a checkpoint on a robot in a real-time control loop",
    "hardware": "a physical arm: emulate its servo bus, calibrate it, find its port, set up its servos",
    "bench": "measure data loading, training, inference, simulation and servo bus speed",
    "quickstart": "demos -> training -> evaluation in simulation, on CPU",
}

USAGE = "usage: robodiff <command> [args] [key=value ...] [--json] [--help]"


def main_help() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [USAGE, "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "Run `robodiff <command> --help` for a command's arguments and keys."]
    return "\n".join(lines)


def split_args(argv: list[str]) -> tuple[list[str], list[str], set[str]]:
    """Positional args, `key=value` overrides, and `--flags`."""
    positional, overrides, flags = [], [], set()
    for arg in argv:
        if arg.startswith("--"):
            flags.add(arg)
        elif "=" in arg and not arg.startswith("="):
            overrides.append(arg)
        else:
            positional.append(arg)
    return positional, overrides, flags


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(main_help(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(main_help())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        message = f"unknown command '{command}' (commands: {', '.join(COMMANDS)})"
        print(f"robodiff: {message}", file=sys.stderr)
        if "--json" in rest:
            _print_json({"error": message, "exit_code": 2})
        return 2
    module = importlib.import_module(f"robodiff.commands.{command}")
    positional, overrides, flags = split_args(rest)
    if "--help" in flags or "-h" in positional:
        print(module.HELP.strip())
        return 0
    json_mode = "--json" in flags
    known_flags = {"--json", "--help"} | set(getattr(module, "FLAGS", ()))
    unknown = sorted(flags - known_flags)
    try:
        if unknown:
            raise UserError(f"unknown flag {unknown[0]} for `robodiff {command}`")
        result: dict[str, Any] = module.run(positional, overrides, flags)
    except UserError as exc:
        return _fail(command, str(exc), json_mode)
    except OSError as exc:
        # An output path the user chose cannot be written (missing parent, read-only, full disk).
        where = f"{exc.filename}: " if exc.filename else ""
        reason = exc.strerror or str(exc)
        if isinstance(exc, (FileExistsError, NotADirectoryError)) and exc.filename and os.path.isfile(exc.filename):
            reason = "a file is in the way (a folder is needed there)"
        return _fail(command, f"{where}{reason}", json_mode)
    except KeyboardInterrupt:
        print(f"robodiff {command}: interrupted", file=sys.stderr)
        if json_mode:
            _print_json({"error": "interrupted", "exit_code": 130})
        return 130
    result = dict(result or {})
    code = int(result.pop("_exit_code", 0))
    # Under torchrun every rank returns the same summary: one line on stdout, from rank 0, so two
    # processes sharing the pipe never interleave their JSON.
    if json_mode and os.environ.get("RANK", "0") == "0":
        _print_json(result)
    return code


def _fail(command: str, message: str, json_mode: bool) -> int:
    # One line, whatever the message held (a child process's error can span several).
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"robodiff {command}: error: {line}", file=sys.stderr)
    if json_mode and os.environ.get("RANK", "0") == "0":
        _print_json({"error": line, "exit_code": 2})
    return 2


def _print_json(result: dict[str, Any]) -> None:
    sys.stdout.flush()
    print(jsonio.dumps(result), flush=True)


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM stops a command as Ctrl-C does, unless it handles it itself


def entry() -> int:
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return main()
    except KeyboardInterrupt:  # before a command started (imports take seconds on a busy machine)
        print("robodiff: interrupted", file=sys.stderr)
        if "--json" in sys.argv[1:]:
            _print_json({"error": "interrupted", "exit_code": 130})
        return 130
    except BrokenPipeError:
        # `robodiff ... | head` closed the pipe: not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(entry())
