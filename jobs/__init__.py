"""Pipeline steps of the daily embedding factory and their I/O (Delta tables, MLflow, Spark, Ray).

STEP_NAMES is the one list of the day's steps, in order; each is the module jobs.steps.<name> with
`run(ds, cfg, run_key=None) -> StepResult`. `generative` is optional (generative.enabled; off by
default it only records that it was disabled). Kept here, import-light, for the Airflow DAG parser.
"""

STEP_NAMES = ("catalog", "ingest", "features", "train", "embed", "semantic_ids", "index", "evaluate", "publish", "generative")
