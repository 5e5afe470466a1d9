#!/usr/bin/env bash
# Set up (CPU torch wheel, the package with its dev extras) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet torch==2.13.0
python3 -m pip install --quiet -e ".[dev]"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
# pytest exits 5 when it collected no test: that must fail CI, so no `|| true` here.
python3 -m pytest -q "$@"
