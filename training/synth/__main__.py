"""python -m training.synth: same as scrapscan-synth."""

import sys

from training.synth.cli import main

sys.exit(main())
