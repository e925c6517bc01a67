"""Step `publish`: after the gates pass, point downstream readers at the day's outputs.

The publish table holds one row per published ds: model version, codebook version, index URI and
the Delta version of every table, so a reader (or an auditor) can time-travel to exactly that state.
Nothing is published for a day whose quarantine share is above the gate or whose outputs are missing.
"""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa

from jobs import lake
from jobs.config import FactoryConfig
from jobs.days import parse_ds
from jobs.errors import FactoryError, QuarantineShareExceeded
from jobs.index import index_uri, read_index
from jobs.semantic_ids import latest_codebook
from jobs.tables import ALL_TABLES, EVENTS, ITEM_EMBEDDINGS, ITEM_TOKENS, PUBLISH, QUARANTINE, USER_EMBEDDINGS, USER_SEQUENCES
from jobs.tracking import StepResult, track_step

REQUIRED_FOR_DS = (EVENTS, USER_SEQUENCES, USER_EMBEDDINGS, ITEM_EMBEDDINGS)


def check_gates(cfg: FactoryConfig, ds: str) -> None:
    """Raise if the day must not be published."""
    clean = lake.read(cfg, EVENTS, where={"ds": ds}, columns=["event_id"]).num_rows
    bad = lake.read(cfg, QUARANTINE, where={"ds": ds, "source": "events"}, columns=["line_number"]).num_rows
    if clean + bad and bad / (clean + bad) > cfg.gate.max_quarantine_share:
        raise QuarantineShareExceeded(f"ds={ds}: {bad} of {clean + bad} event rows are quarantined; not publishing.")
    for spec in REQUIRED_FOR_DS:
        if lake.read(cfg, spec, where={"ds": ds}, columns=[spec.key[0]]).num_rows == 0:
            raise FactoryError(f"ds={ds}: {spec.name} has no rows for this day; run its step ({spec.owner}) first.")
    if read_index(index_uri(cfg, ds)) is None:
        raise FactoryError(f"ds={ds}: no item index at {index_uri(cfg, ds)}; run the index step first.")


def run(ds: str, cfg: FactoryConfig, run_key: str | None = None) -> StepResult:
    parse_ds(ds)
    with track_step(cfg, ds, "publish", run_key) as step:
        check_gates(cfg, ds)
        model_version = lake.read(cfg, USER_EMBEDDINGS, where={"ds": ds}, columns=["model_version"]).column(0)[0].as_py()
        codebook = latest_codebook(cfg)
        if codebook is None:
            raise FactoryError(f"ds={ds}: no codebook yet; run the semantic_ids step first.")
        tokens = lake.read(cfg, ITEM_TOKENS, where={"codebook_version": codebook[0]}, columns=["item_id"])
        if tokens.num_rows == 0:
            raise FactoryError(f"ds={ds}: codebook {codebook[0]} has no item tokens; run the semantic_ids step.")
        versions = {spec.name: lake.current_version(cfg, spec) for spec in ALL_TABLES if spec is not PUBLISH}
        row = {
            "ds": ds, "model_version": model_version, "codebook_version": codebook[0], "index_uri": index_uri(cfg, ds),
            "table_versions": json.dumps(versions, sort_keys=True), "published_at": dt.datetime.now(dt.timezone.utc),
        }
        step.wrote(PUBLISH, lake.replace_partition(cfg, PUBLISH, pa.Table.from_pylist([row], schema=PUBLISH.schema), {"ds": ds}))
        step.params(model_version=model_version, codebook_version=codebook[0])
        step.note(f"published ds={ds}: model {model_version}, codebook {codebook[0]}")
        return step.result


def latest_published(cfg: FactoryConfig) -> dict | None:
    """The newest published day's row (what downstream readers should use)."""
    table = lake.read(cfg, PUBLISH)
    if table.num_rows == 0:
        return None
    return table.sort_by([("ds", "descending")]).slice(0, 1).to_pylist()[0]
