"""The import directions of docs/architecture.md, read from the source with `ast`.

Every `robodiff` import in every module (inside functions too) must follow an arrow of `ALLOWED`,
no robodiff import may sit inside a function (the way cycles get hidden), and the module graph
must have no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "robodiff"

GROUND = {"errors", "features", "paths", "config", "progress", "jsonio"}
FACE = {"cli", "commands", "quickstart", "bench", "__main__", "__init__"}
# package -> the packages it may import (the ground is allowed everywhere, the face imports anything)
ALLOWED: dict[str, set[str]] = {
    "data": set(),
    "models": set(),
    "policy": {"models"},
    "train": {"policy", "models", "data"},
    "hal": set(),
    "sim": {"hal"},
    "control": {"policy", "hal", "data"},
    "eval": {"sim", "control", "policy", "hal", "data"},
}


def package_of(module: str) -> str:
    """`robodiff.sim.tasks` -> `sim`; `robodiff.errors` -> `errors`; `robodiff` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(source: str, module: str, is_package: bool) -> list[tuple[str, int, bool, list[str]]]:
    """(imported robodiff module, line, inside a function, names imported from it) for every
    import in `source`."""
    found: list[tuple[str, int, bool, list[str]]] = []
    base = module.split(".") if is_package else module.split(".")[:-1]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function, []) for a in child.names
                             if a.name.split(".")[0] == "robodiff")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    target = ".".join(base[:len(base) - child.level + 1] + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] == "robodiff":
                    if target == "robodiff":
                        # `from robodiff import x` imports the module `robodiff.x` when there is one
                        found.extend((f"robodiff.{a.name}", child.lineno, in_function, []) for a in child.names)
                    else:
                        found.append((target, child.lineno, in_function, [a.name for a in child.names]))
            visit(child, inner)

    visit(ast.parse(source), False)
    return found


def violations(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """Every broken rule in `sources` (module name -> (source, is_package))."""
    out = []
    for module, (source, is_package) in sorted(sources.items()):
        mine = package_of(module)
        for target, line, in_function, _ in imports(source, module, is_package):
            theirs = package_of(target)
            if in_function:
                out.append(f"{module}:{line}: imports {target} inside a function")
            if mine in FACE or theirs in GROUND or theirs == mine:
                continue
            if mine in GROUND:
                out.append(f"{module}:{line}: the ground imports {target}")
            elif theirs not in ALLOWED.get(mine, set()):
                out.append(f"{module}:{line}: {mine} -> {theirs} ({target}) is not an allowed arrow")
    return out


def cycles(sources: dict[str, tuple[str, bool]]) -> list[list[str]]:
    """Import cycles between modules (module-level and function-level imports alike)."""
    graph: dict[str, set[str]] = {}
    for module, (source, is_package) in sources.items():
        targets = set()
        for target, _, _, names in imports(source, module, is_package):
            # `from robodiff.a import b` imports the submodule robodiff.a.b when there is one
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in sources]
            targets.update(subs or [target])
        graph[module] = {t for t in targets if t in sources and t != module}
    found, state = [], {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [])
    return found


def read_package(root: Path) -> dict[str, tuple[str, bool]]:
    return {module_name(p, root): (p.read_text(), p.name == "__init__.py") for p in root.rglob("*.py")}


def test_every_import_follows_an_allowed_arrow():
    assert violations(read_package(ROOT)) == []


def test_no_import_cycle_between_modules():
    assert cycles(read_package(ROOT)) == []


# The seven back-arrows of a4bd1c6 (as they were written there), and three more shapes of the same.
@pytest.mark.parametrize("module, source", [
    ("robodiff.hal.teleop", "def reset():\n    from robodiff.sim.experts import make_expert\n"),  # hal -> sim
    ("robodiff.sim.evaluate", "from robodiff.train.checkpoint import load_policy\n"),  # sim -> train
    ("robodiff.train.data", "def keys():\n    from robodiff.sim.tasks import load_task\n"),  # train -> sim
    ("robodiff.sim.evaluate", "from robodiff.control.history import ObservationHistory\n"),  # sim -> control
    ("robodiff.sim.evaluate", "from robodiff.policy.fast_inference import for_deployment\n"),  # sim -> policy
    ("robodiff.sim.collect", "from robodiff.data.store import EpisodeRecorder\n"),  # sim -> data
    ("robodiff.policy.diffusion", "from robodiff.data.normalizer import Normalizer\n"),  # policy -> data
    ("robodiff.train.trainer", "import robodiff.eval\n"),
    ("robodiff.data.stats", "from ..policy import normalizer\n"),
    ("robodiff.errors", "from robodiff.data import store\n"),
])
def test_an_upward_import_is_caught(module, source):
    sources = {**read_package(ROOT), module: (source, module.count(".") == 1)}
    assert any(v.startswith(f"{module}:") for v in violations(sources))


def test_a_function_level_import_is_caught_even_when_allowed():
    sources = {"robodiff.policy.x": ("def f():\n    from robodiff.models import ema\n", False)}
    assert violations(sources) == ["robodiff.policy.x:2: imports robodiff.models inside a function"]


def test_a_cycle_is_caught():
    # a4bd1c6's cycle inside sim, behind function-level imports
    sources = {"robodiff.sim.tasks": ("def load():\n    from robodiff.sim.gym_envs import gym_task_features\n", False),
               "robodiff.sim.gym_envs": ("from robodiff.sim.env import SimEnv\n", False),
               "robodiff.sim.env": ("from robodiff.sim import tasks\n", False),
               "robodiff.sim": ("", True)}
    assert cycles(sources) == [["robodiff.sim.env", "robodiff.sim.tasks", "robodiff.sim.gym_envs",
                                "robodiff.sim.env"]]
