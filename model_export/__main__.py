"""python -m model_export: same as scrapscan-export."""

import sys

from model_export.cli import main

sys.exit(main())
