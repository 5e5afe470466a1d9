"""JSON that every parser reads: a figure that is not finite (a rate over no time, a loss that
diverged) is unknown, `null`, never the `NaN` / `Infinity` that Python's json writes by default."""

from __future__ import annotations

import json
import math
from typing import Any


def strict(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None (numpy scalars and arrays as lists)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return strict(obj.tolist())
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    return json.dumps(strict(obj), allow_nan=False, default=str, **kwargs)
