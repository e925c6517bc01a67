"""`python -m jobs.faults` (`make faults`)."""

import sys

from jobs.faults.scenarios import main

sys.exit(main())
