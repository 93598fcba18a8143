"""`python -m zonemesh.ctl ...` runs zmctl (handy where the console script is not on PATH)."""

import sys

from zonemesh.ctl.main import main

sys.exit(main())
