"""Generated data: the seeded generator (generate.py with catalog.py and listening.py), the named
worlds of tests, fault scenarios and benchmarks (worlds.py), and the demo that runs one (demo.py)."""
