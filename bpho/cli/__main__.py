"""`python -m bpho.cli`: the `bpho` command."""

import sys

from bpho.cli import main

sys.exit(main())
