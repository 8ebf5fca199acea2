"""python -m training.region: the scrapscan-region command."""

import sys

from training.region.train import main

sys.exit(main())
