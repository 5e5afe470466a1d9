"""`python -m robodiff ...` (and `torchrun -m robodiff train ...`) run the CLI."""

import sys

from robodiff.cli import entry

sys.exit(entry())
