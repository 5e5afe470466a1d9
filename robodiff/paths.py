"""Where the declarative folders (tasks/, hardware/, datasets/) are, in a checkout or a wheel."""

from __future__ import annotations

from pathlib import Path

from robodiff.errors import UserError

ASSETS = Path(__file__).resolve().parent / "assets"


def asset_dir(kind: str) -> Path:
    """`tasks`, `hardware` or `datasets`; packaged under robodiff/assets (symlinks in a checkout)."""
    return ASSETS / kind


def resolve_yaml(kind: str, name: str) -> Path:
    """A name from `<kind>/<name>.yaml`, or a path to a YAML file the user wrote."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate.resolve()
    path = asset_dir(kind) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in asset_dir(kind).glob("*.yaml"))
        raise UserError(f"unknown {kind[:-1] if kind.endswith('s') else kind} '{name}' "
                        f"(known: {', '.join(known) or 'none'}; or pass a path to a .yaml file)")
    return path
