"""Where the work runs: a local Ray or a cluster (ray_cluster.py), the factory's local Airflow (airflow_env.py)."""
