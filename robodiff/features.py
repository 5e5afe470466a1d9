"""Feature descriptions: every array a robot, dataset or policy exchanges is described by data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robodiff.errors import UserError

KINDS = ("image", "lowdim", "action", "timestamp")
# The conventions an arm's joint positions come in (LeRobot's two; see robodiff.hal.joint_units).
JOINT_UNITS = ("degrees", "range100")


@dataclass(frozen=True)
class Feature:
    """One named array per step: `kind` says how it is treated, `shape` excludes the time axis.

    `units` (optional) names the convention the values are in, e.g. an arm's joints in `degrees`
    or `range100`: stores and checkpoints record it, so data or a policy in one convention is
    never fed to a robot in another (same-shaped numbers that mean different angles)."""

    kind: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    names: tuple[str, ...] | None = field(default=None, compare=False)
    units: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"feature kind '{self.kind}' is not one of {', '.join(KINDS)}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "dtype", str(np.dtype(self.dtype)))
        if self.kind == "image" and (len(self.shape) != 3 or self.dtype != "uint8"):
            raise UserError(f"image features are uint8 HWC, got shape {list(self.shape)} dtype {self.dtype}")
        if self.units is not None and (not isinstance(self.units, str) or not self.units):
            raise UserError(f"feature units must be a non-empty name, got {self.units!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "shape": list(self.shape), "dtype": self.dtype}
        if self.names:
            out["names"] = list(self.names)
        if self.units:
            out["units"] = self.units
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Feature":
        names = d.get("names")
        return cls(kind=d["kind"], shape=tuple(d["shape"]), dtype=d.get("dtype", "float32"),
                   names=tuple(names) if names else None, units=d.get("units"))


Features = dict[str, Feature]


def features_to_dict(features: Features) -> dict[str, dict[str, Any]]:
    return {name: f.to_dict() for name, f in features.items()}


def features_from_dict(d: dict[str, dict[str, Any]]) -> Features:
    return {name: Feature.from_dict(v) for name, v in d.items()}


def infer_feature(name: str, arr: np.ndarray) -> Feature:
    """Guess a feature from an array with a leading time axis (used by importers)."""
    shape = tuple(arr.shape[1:])
    if name == "timestamp":
        return Feature("timestamp", shape, "float64")
    if name == "action":
        return Feature("action", shape, "float32")
    if len(shape) == 3 and shape[-1] in (1, 3, 4):
        return Feature("image", shape, "uint8")
    return Feature("lowdim", shape, "float32")


def of_kind(features: Features, *kinds: str) -> list[str]:
    return [k for k, f in features.items() if f.kind in kinds]


def check_units(key: str, ours: Feature, theirs: Feature, who: str) -> None:
    """A checkpoint's feature and a robot's or task's (`who`) must be in the same units: the same
    shapes in another convention (degrees vs range100) would be read as other angles."""
    if ours.units != theirs.units:
        def say(units: str | None) -> str:
            return f"units '{units}'" if units else "no stated units"
        raise UserError(f"feature '{key}': the checkpoint's is in {say(ours.units)}, {who}'s in "
                        f"{say(theirs.units)}; a policy runs only on a robot in its own units")


def check_provided(key: str, want: Feature, theirs: Features, asker: str, who: str) -> None:
    """`theirs` (what `who` provides, e.g. a robot's features) holds `key` in the shape and units
    `asker` (a checkpoint, a task) needs: else one line naming the key."""
    have = theirs.get(key)
    if have is None:
        raise UserError(f"{asker} reads '{key}' that {who} does not provide (it has {', '.join(sorted(theirs))})")
    if tuple(have.shape) != tuple(want.shape):
        raise UserError(f"{asker} expects '{key}' of shape {list(want.shape)}, {who} gives {list(have.shape)}")
    check_units(key, want, have, who)
