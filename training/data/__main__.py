"""python -m training.data: same as scrapscan-data."""

import sys

from training.data.cli import main

sys.exit(main())
