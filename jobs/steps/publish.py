"""Step `publish`: after the gates pass, point downstream readers at the day's outputs.

The publish table holds one row per published ds: model version, codebook version, index URI and
the Delta version of every table, so a reader (or an auditor) can time-travel to exactly that state.
The step first pins the current version of every table, checks the gates on exactly those
snapshots, and writes the row last, in one commit, only if every gate passed: the pointer names
versions that were checked, whatever other runs commit meanwhile. A day that fails a gate is not
published and readers keep using the previous published day (`latest_published`).

Gates (all in [gate], docs/reliability.md): the quarantine share and the raw volume of the day;
complete outputs (events, sequences, user and item vectors of one model version, the index, a SID
for every item of the day's catalog); finite unit-length vectors (a diverged model's NaNs); the
codebook's collision rate before de-duplication, absolute and against the serving codebook; the
drift of users' vectors under an unchanged model; the next-day HR@K against the last evaluated day.
The step's MLflow run records every measured value (`gate.*` metrics) and the decision and reason
(params `gate_decision`, `gate_reason`).
"""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import functions as F

from jobs.config import FactoryConfig
from jobs.days import parse_ds
from jobs.errors import GateFailed, QuarantineShareExceeded
from jobs.lakehouse import commit, delta
from jobs.lakehouse.spark import read_snapshot
from jobs.lakehouse.tables import (
    ALL_TABLES,
    CODEBOOKS,
    EVAL_METRICS,
    EVENTS,
    ITEM_EMBEDDINGS,
    ITEM_TOKENS,
    ITEMS,
    PUBLISH,
    QUARANTINE,
    USER_EMBEDDINGS,
    USER_SEQUENCES,
)
from jobs.steps.index import index_uri, read_index
from jobs.tracking.runs import StepResult, track_step
from models.sid_metrics import collision_rate

REQUIRED_FOR_DS = (EVENTS, USER_SEQUENCES, USER_EMBEDDINGS, ITEM_EMBEDDINGS)


def pinned_versions(cfg: FactoryConfig) -> dict[str, int | None]:
    """The current Delta version of every table but publish: the snapshot a publish checks and names."""
    return {spec.name: delta.current_version(cfg, spec) for spec in ALL_TABLES if spec is not PUBLISH}


def check_gates(cfg: FactoryConfig, ds: str, measured: dict[str, float] | None = None,
                versions: dict[str, int | None] | None = None) -> dict:
    """Raise GateFailed (one sentence; `.gate` names the check) if the day must not be published; otherwise
    return what it would publish: model_version and codebook_version. Tables are read at `versions`
    (default: pinned now). Every value a gate looked at is put into `measured` (gate name -> value)
    as it is checked, so a refusal can log them too."""
    measured = {} if measured is None else measured
    versions = pinned_versions(cfg) if versions is None else versions
    gate = cfg.gate

    def read(spec, **kwargs) -> pa.Table:
        if versions.get(spec.name) is None:  # not written when the versions were pinned
            return delta.read(cfg, spec, **kwargs).slice(0, 0)
        return delta.read(cfg, spec, version=versions[spec.name], **kwargs)

    def rows(spec, where: dict[str, str]) -> int:  # from the log's file statistics: no rows read
        return 0 if versions.get(spec.name) is None else commit.committed_rows(cfg, spec, where, versions[spec.name])

    clean = rows(EVENTS, {"ds": ds})
    bad = rows(QUARANTINE, {"ds": ds, "source": "events"})
    measured.update(raw_rows=clean + bad, quarantine_share=bad / (clean + bad) if clean + bad else 0.0)
    if clean + bad < gate.min_raw_lines:
        raise GateFailed(f"ds={ds}: {clean + bad} raw event rows were ingested for this day, fewer than "
                         f"gate.min_raw_lines={gate.min_raw_lines}; run ingest on a complete drop first.",
                         gate="raw_volume")
    if measured["quarantine_share"] > gate.max_quarantine_share:
        raise QuarantineShareExceeded(f"ds={ds}: {bad} of {clean + bad} event rows are quarantined, above "
                                      f"gate.max_quarantine_share={gate.max_quarantine_share}; not publishing.")
    for spec in REQUIRED_FOR_DS:
        if rows(spec, {"ds": ds}) == 0:
            raise GateFailed(f"ds={ds}: {spec.name} has no rows for this day; run its step ({spec.owner}) first.",
                             gate="complete_outputs")
    if read_index(index_uri(cfg, ds)) is None:
        raise GateFailed(f"ds={ds}: no item index at {index_uri(cfg, ds)}; run the index step first.",
                         gate="complete_outputs")

    user_versions, user_error = _user_vector_facts(cfg, ds, versions.get(USER_EMBEDDINGS.name))
    model_version = _one_model_version(user_versions, read, ds)
    item_error = _vector_norm_error(read(ITEM_EMBEDDINGS, where={"ds": ds}, columns=["embedding"]).column(0))
    errors = (user_error, item_error)
    measured["max_norm_error"] = max(errors) if all(math.isfinite(e) for e in errors) else float("nan")
    if not measured["max_norm_error"] <= 1e-3:  # also catches NaN
        raise GateFailed(f"ds={ds}: user or item vectors are not finite unit vectors (largest |norm - 1| = "
                         f"{measured['max_norm_error']}); the model is broken, not publishing.",
                         gate="vector_norms")
    codebook_version, rate = _codebook_coverage(read, ds)
    measured["collision_rate_before_dedup"] = rate
    if rate > gate.max_collision_rate:
        raise GateFailed(f"ds={ds}: codebook {codebook_version} has a collision rate before de-duplication of "
                         f"{rate:.3f}, above gate.max_collision_rate={gate.max_collision_rate}; not publishing.",
                         gate="collision_rate")
    serving = _serving_codebook(cfg, ds)
    if serving is not None and serving != codebook_version:
        before = _collision_rate(read, serving)
        measured["collision_rate_serving"] = before
        if rate - before > gate.max_collision_rate_increase:
            raise GateFailed(f"ds={ds}: codebook {codebook_version} collides more than the serving codebook {serving} "
                             f"({rate:.3f} vs {before:.3f} before de-duplication), beyond "
                             f"gate.max_collision_rate_increase={gate.max_collision_rate_increase}; not publishing.",
                             gate="collision_rate_increase")
    metrics = _eval_metrics(read, ds)
    drift = metrics.get(("encoder", "drift_mean_cosine"))
    if drift is not None:
        measured["drift_mean_cosine"] = drift
        if drift < gate.min_drift_cosine:
            raise GateFailed(f"ds={ds}: users' vectors moved to a mean cosine of {drift:.3f} with yesterday's under "
                             f"the same model, below gate.min_drift_cosine={gate.min_drift_cosine}; not publishing.",
                             gate="drift")
    k = cfg.evaluate.k
    today, previous = metrics.get(("encoder", f"hr_at_{k}")), _previous_hr(read, ds, k)
    if today is not None and previous is not None and previous[1] > 0:
        drop = (previous[1] - today) / previous[1]
        measured.update(hr_at_k=today, hr_at_k_previous=previous[1], hr_drop=drop)
        if drop > gate.max_hr_drop:
            raise GateFailed(f"ds={ds}: next-day HR@{k} fell from {previous[1]:.4f} ({previous[0]}) to {today:.4f}, "
                             f"a drop of {drop:.0%}, above gate.max_hr_drop={gate.max_hr_drop:.0%}; not publishing.",
                             gate="hr_drop")
    return {"model_version": model_version, "codebook_version": codebook_version}


def _user_vector_facts(cfg: FactoryConfig, ds: str, version: int | None) -> tuple[set[str], float]:
    """The day's user vectors checked on Spark (a per-user table: no row reaches the driver): their
    model versions (at most two collected) and max |‖v‖ - 1| (NaN or inf if a value is not finite)."""
    if version is None:
        return set(), 0.0
    _, users = read_snapshot(cfg, USER_EMBEDDINGS, {"ds": [ds]}, version)
    versions = {row[0] for row in users.select("model_version").distinct().limit(2).collect()}
    squares = F.aggregate("embedding", F.lit(0.0).cast("double"), lambda total, x: total + x.cast("double") * x.cast("double"))
    worst = users.select(F.max(F.abs(F.sqrt(squares) - 1.0))).first()[0]  # Spark's max ranks NaN above all
    return versions, 0.0 if worst is None else float(worst)


def _one_model_version(users: set[str], read, ds: str) -> str:
    """The single model version behind the day's user and item vectors (a mix means a partial rerun)."""
    items = set(read(ITEM_EMBEDDINGS, where={"ds": ds}, columns=["model_version"]).column(0).to_pylist())
    if len(users) != 1 or users != items:
        raise GateFailed(f"ds={ds}: user vectors come from model version(s) {sorted(users)} and item vectors from "
                         f"{sorted(items)}; rerun the embed step so both come from one model.",
                         gate="one_model_version")
    return next(iter(users))


def _vector_norm_error(column: pa.ChunkedArray) -> float:
    """max |‖v‖ - 1| over a column of vectors (NaN if any value is not finite)."""
    column = column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    if not np.isfinite(values).all():
        return float("nan")
    sizes = np.diff(column.offsets.to_numpy())
    norms = np.sqrt(np.bincount(np.repeat(np.arange(len(sizes)), sizes), weights=values**2, minlength=len(sizes)))
    return float(np.abs(norms - 1.0).max(initial=0.0))


def _codebook_coverage(read, ds: str) -> tuple[int, float]:
    """(newest codebook version, its collision rate) after checking every item of ds has a SID in it."""
    books = read(CODEBOOKS, columns=["codebook_version"])
    if books.num_rows == 0:
        raise GateFailed(f"ds={ds}: no codebook yet; run the semantic_ids step first.", gate="complete_outputs")
    version = pc.max(books.column(0)).as_py()
    tokens = read(ITEM_TOKENS, where={"codebook_version": version}, columns=["item_id", "tokens"])
    items = read(ITEMS, columns=["item_id", "first_seen_ds"])
    due = set(items.filter(pc.less_equal(items.column("first_seen_ds"), ds)).column("item_id").to_pylist())
    missing = due - set(tokens.column("item_id").to_pylist())
    if missing:
        raise GateFailed(f"ds={ds}: {len(missing)} of {len(due)} items have no SID in codebook {version} "
                         f"(e.g. {sorted(missing)[0]}); rerun the semantic_ids step.", gate="sid_coverage")
    return version, _collision_rate(read, version)


def _collision_rate(read, version: int) -> float:
    """Share of items whose codes before the de-duplication token are shared with another item."""
    tokens = read(ITEM_TOKENS, where={"codebook_version": version}, columns=["tokens"]).column(0).to_pylist()
    codes = np.array(tokens, dtype=np.int64)
    return collision_rate(codes[:, :-1]) if len(codes) else 0.0


def _serving_codebook(cfg: FactoryConfig, ds: str) -> int | None:
    """The codebook version of the latest day published before ds (what readers use now)."""
    rows = delta.read(cfg, PUBLISH, columns=["ds", "codebook_version"]).to_pylist()
    earlier = sorted((r["ds"], r["codebook_version"]) for r in rows if r["ds"] < ds)
    return earlier[-1][1] if earlier else None


def _eval_metrics(read, ds: str) -> dict[tuple[str, str], float]:
    rows = read(EVAL_METRICS, where={"ds": ds}, columns=["method", "metric", "value"]).to_pylist()
    return {(r["method"], r["metric"]): r["value"] for r in rows}


def _previous_hr(read, ds: str, k: int) -> tuple[str, float] | None:
    """(ds, encoder HR@k) of the latest evaluated day before ds, if any."""
    rows = read(EVAL_METRICS, columns=["ds", "method", "metric", "value"]).to_pylist()
    earlier = sorted((r["ds"], r["value"]) for r in rows
                     if r["ds"] < ds and r["method"] == "encoder" and r["metric"] == f"hr_at_{k}")
    return earlier[-1] if earlier else None


def run(ds: str, cfg: FactoryConfig, run_key: str | None = None) -> StepResult:
    parse_ds(ds)
    with track_step(cfg, ds, "publish", run_key) as step:
        measured: dict[str, float] = {}
        versions = pinned_versions(cfg)
        try:
            chosen = check_gates(cfg, ds, measured, versions)
        except GateFailed as refused:
            step.params(gate_decision="refused", gate=refused.gate, gate_reason=str(refused))
            step.note(f"not published: {refused}")
            raise
        finally:
            step.metrics(**{f"gate.{name}": value for name, value in measured.items()})
        row = {
            "ds": ds, **chosen, "index_uri": index_uri(cfg, ds),
            "table_versions": json.dumps(versions, sort_keys=True), "published_at": dt.datetime.now(dt.UTC),
        }
        step.wrote(PUBLISH, delta.replace_partition(cfg, PUBLISH, pa.Table.from_pylist([row], schema=PUBLISH.schema), {"ds": ds}))
        step.params(gate_decision="published", **chosen)
        step.note(f"published ds={ds}: model {chosen['model_version']}, codebook {chosen['codebook_version']}")
        return step.result


def latest_published(cfg: FactoryConfig) -> dict | None:
    """The newest published day's row (what downstream readers should use)."""
    table = delta.read(cfg, PUBLISH)
    if table.num_rows == 0:
        return None
    return table.sort_by([("ds", "descending")]).slice(0, 1).to_pylist()[0]
