"""An installed wheel (not only an editable checkout) carries the configs and declarative folders."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_carries_configs_tasks_and_hardware(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("robodiff-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"robodiff/assets/{p.relative_to(REPO).as_posix()}"
                for folder in ("tasks", "hardware") for p in (REPO / folder).iterdir()}
    expected |= {f"robodiff/{p.relative_to(REPO / 'robodiff').as_posix()}"
                 for p in (REPO / "robodiff" / "conf").rglob("*.yaml")}
    assert expected and expected <= names, sorted(expected - names)
    assert "robodiff/cli.py" in names
