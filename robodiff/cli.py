"""`robodiff <command> [args] key=value ... [--json]`.

Each command lives in `robodiff/commands/<name>.py` with `HELP` (text) and
`run(args, overrides, json_mode) -> dict`. With `--json` the returned dict is printed as the last
line of stdout; human output goes before it or to stderr. User errors print one line and exit 2.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any

from robodiff import __version__
from robodiff.errors import UserError

COMMANDS: dict[str, str] = {
    "collect": "record demonstrations from a teleop device or a scripted expert",
    "dataset": "inspect, validate, import and view episode stores",
    "train": "train a policy on an episode store",
    "eval": "evaluate a policy in simulation (success rate, score, videos)",
    "deploy": "run a checkpoint on a robot in a real-time control loop",
    "bench": "measure data loading, training and inference speed",
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
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(main_help())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"robodiff: unknown command '{command}' (commands: {', '.join(COMMANDS)})", file=sys.stderr)
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
        print(f"robodiff {command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # An output path the user chose cannot be written (missing parent, read-only, full disk).
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"robodiff {command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"robodiff {command}: interrupted", file=sys.stderr)
        return 130
    result = dict(result or {})
    code = int(result.pop("_exit_code", 0))
    # Under torchrun every rank returns the same summary: one line on stdout, from rank 0, so two
    # processes sharing the pipe never interleave their JSON.
    if json_mode and os.environ.get("RANK", "0") == "0":
        sys.stdout.flush()
        print(json.dumps(result, default=_json_default), flush=True)
    return code


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def entry() -> int:
    try:
        return main()
    except BrokenPipeError:
        # `robodiff ... | head` closed the pipe: not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(entry())
