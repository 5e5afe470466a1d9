"""What a command did to a folder, file by file: a digest of every file under it."""

from __future__ import annotations

import hashlib
from pathlib import Path


def digests(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """{relative path: sha256} of every file under `root`, except those named in `skip`."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}
