"""What a day produced: every table with its Delta version and row counts, the MLflow runs and
metrics, and the published pointer. Used by `factory show` and at the end of the demo."""

from __future__ import annotations

import pyarrow.compute as pc

from jobs.config import FactoryConfig
from jobs.lakehouse import delta
from jobs.lakehouse.tables import ALL_TABLES, EVAL_METRICS, ITEM_TOKENS
from jobs.steps.publish import latest_published
from jobs.tracking.day_runs import day_outcome
from jobs.tracking.runs import day_summary


def day_report(cfg: FactoryConfig, ds: str | None = None) -> dict:
    published = latest_published(cfg)
    ds = ds or (published or {}).get("ds")
    tables = []
    for spec in ALL_TABLES:
        table = delta.open_table(cfg, spec)
        entry = {"table": spec.name, "uri": delta.table_uri(cfg, spec), "version": None, "rows": 0, "rows_for_ds": None}
        if table is not None:
            entry["version"] = table.version()
            entry["rows"] = table.count()
            if ds and "ds" in spec.schema.names:
                entry["rows_for_ds"] = delta.read(cfg, spec, where={"ds": ds}, columns=["ds"]).num_rows
        tables.append(entry)
    report = {"ds": ds, "lake": cfg.lake_uri, "mlflow_tracking_uri": cfg.mlflow_tracking_uri,
              "published": published, "tables": tables, "day": None, "steps": [], "eval_metrics": [],
              "semantic_ids": {}}
    if ds:
        report["day"] = day_outcome(cfg, ds)  # the parent run: what the MLflow UI shows for the day
        report["steps"] = day_summary(cfg, ds)
        metrics = delta.read(cfg, EVAL_METRICS, where={"ds": ds})
        report["eval_metrics"] = metrics.drop_columns(["ds"]).to_pylist()
    report["semantic_ids"] = sid_summary(cfg)
    return report


def sid_summary(cfg: FactoryConfig) -> dict:
    tokens = delta.read(cfg, ITEM_TOKENS, columns=["codebook_version", "item_id", "tokens", "sid"])
    if tokens.num_rows == 0:
        return {}
    version = pc.max(tokens.column("codebook_version")).as_py()
    current = tokens.filter(pc.equal(tokens.column("codebook_version"), version))
    lengths = pc.list_value_length(current.column("tokens"))
    return {
        "codebook_version": version, "items": current.num_rows,
        "distinct_sids": len(set(current.column("sid").to_pylist())),
        "min_tokens": pc.min(lengths).as_py(), "max_tokens": pc.max(lengths).as_py(),
        "example": current.slice(0, 1).select(["item_id", "sid"]).to_pylist()[0],
    }
