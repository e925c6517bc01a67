"""MLflow: one run per step nested under a run per day (runs.py), the model registry (registry.py),
the plots steps log (plots.py) and peak memory (memory.py)."""
