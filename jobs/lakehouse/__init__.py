"""The lake: the table registry (tables.py), Delta reads and writes (delta.py: the Arrow path for small
tables; commit.py: engines' files of large tables, committed by the driver), the landing drops
(landing.py) and the Spark session (spark.py). Knows nothing of the steps."""
