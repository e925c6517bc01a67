"""Fault scenarios (`factory faults`, `make faults`): kill -9 inside writes, concurrent runs, backfill,
quality gates, bad input and invocations, on a tiny generated world; results in docs/reliability.md.

A leaf: nothing in the factory imports it (jobs.cli mounts jobs.faults.cli, which is import-light).
world.py builds and snapshots the world, inject.py pauses writes before their commit (through the
lakehouse's one hook), scenarios.py and refusals.py are the scenarios, report.py writes the table.
"""
