"""The lake: the table registry (tables.py), Delta reads and writes (delta.py, delta_spark.py), the
landing drops (landing.py) and the Spark session (spark.py). Knows nothing of the steps."""
