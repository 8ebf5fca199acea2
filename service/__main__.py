"""python -m service: same as scrapscan-serve."""

import sys

from service.cli import main

sys.exit(main())
