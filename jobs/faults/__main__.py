"""`python -m jobs.faults` (`make faults`): see jobs/faults/cli.py."""

from jobs.faults.cli import main

main()
