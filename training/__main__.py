"""python -m training: same as scrapscan-train."""

import sys

from training.train import main

sys.exit(main())
