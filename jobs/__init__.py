"""The daily embedding factory: the pipeline's steps and everything they run on.

One sub-package per concern (docs/architecture.md has the map and the import rules): steps (one
module per DAG task; STEPS lists them), lakehouse (tables, Delta I/O, landing drops, Spark), tracking
(MLflow runs and registry, plots, memory), runtime (Ray, Airflow), serving (answers over the
published outputs), synthetic (generated worlds), bench and faults (leaves nothing imports). Top
level: config, errors, days, pipeline (one step / day / range) and cli (`factory`).
"""
