"""`python -m aidmp.cli ...`, the same as `aidmp ...`."""

import sys

from aidmp.cli import main

sys.exit(main())
