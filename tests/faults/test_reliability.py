"""Reliability at unit level: validation and gates, lake retries and crash safety, path safety,
preflight errors and security defaults. No Spark, no Ray; the whole-pipeline scenarios (kill -9 in
a step, concurrent days, backfill, bad model/codebook) are in jobs/faults/scenarios.py (`make faults`)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake.exceptions import CommitFailedError

from jobs import pipeline
from jobs.config import ConfigError, load_config, with_overrides
from jobs.days import parse_ds, shift
from jobs.errors import (
    ConcurrentWriteError,
    DropRefused,
    FactoryError,
    GateFailed,
    QuarantineShareExceeded,
    UnsafePath,
)
from jobs.faults.refusals import bad_event_lines, write_drop
from jobs.faults.report import BEGIN, END, write_results
from jobs.faults.world import fingerprint, orphan_files
from jobs.lakehouse import delta
from jobs.lakehouse.landing import drop_days, drop_files, drop_uri
from jobs.lakehouse.tables import (
    CODEBOOKS,
    EVAL_METRICS,
    EVENTS,
    ITEM_EMBEDDINGS,
    ITEM_TOKENS,
    ITEM_VOCAB,
    ITEMS,
    QUARANTINE,
    USER_EMBEDDINGS,
    USER_SEQUENCES,
    TableSpec,
)
from jobs.steps import catalog, ingest, publish
from jobs.steps.index import build_index, index_uri, write_index
from jobs.tracking.runs import StepResult
from tests import REPO

DS = "2026-01-01"
TRACKS = [f"trk_{i:06d}" for i in range(1, 6)]


def catalog_line(item_id: str, title: str = "Song", **extra) -> bytes:
    return json.dumps({"item_id": item_id, "item_type": "track", "title": title, "genre": "jazz", "artist": "A",
                       "duration_ms": 200_000, **extra}).encode()


@pytest.fixture
def cfg(tmp_path, mlflow_store):
    """A lake and landing of its own, with a catalog of five tracks first seen on DS."""
    cfg = load_config(overrides={"paths.state_dir": str(tmp_path), **mlflow_store})
    write_drop(Path(cfg.landing_uri), "catalog", DS, [catalog_line(i) for i in TRACKS], files=1)
    catalog.run(DS, cfg)
    return cfg


def ingest_lines(cfg, ds: str, lines: list[bytes], **gate) -> None:
    write_drop(Path(cfg.landing_uri), "events", ds, lines)
    ingest.run(ds, with_overrides(cfg, gate=gate) if gate else cfg)


# --- bad input: quarantined with a reason, counted, never dropped -------------------------------

def test_every_kind_of_bad_line_is_quarantined_with_its_reason_and_nothing_is_lost(cfg):
    lines, expected = bad_event_lines(DS, TRACKS, good=200)
    write_drop(Path(cfg.landing_uri), "events", DS, lines)
    result = ingest.run(DS, cfg)
    quarantined = delta.read(cfg, QUARANTINE, where={"ds": DS, "source": "events"})
    assert Counter(quarantined.column("reason").to_pylist()) == expected
    assert delta.read(cfg, EVENTS, where={"ds": DS}).num_rows == 200
    assert result.metrics["raw_lines"] == len(lines) == 200 + quarantined.num_rows
    assert {k: v for k, v in result.metrics.items() if k.startswith("quarantined.")} == \
        {f"quarantined.{reason}": n for reason, n in expected.items()}
    assert set(quarantined.column("raw_bytes").to_pylist()) <= set(lines)  # byte-exact


def test_rerun_of_catalog_and_ingest_leaves_every_table_identical(cfg):
    ingest_lines(cfg, DS, bad_event_lines(DS, TRACKS, good=150)[0])
    before = fingerprint(cfg)
    catalog.run(DS, cfg)
    ingest.run(DS, cfg)
    assert fingerprint(cfg) == before


def test_empty_day_is_refused_before_anything_is_written(cfg):
    ingest_lines(cfg, DS, bad_event_lines(DS, TRACKS, good=150)[0])
    before = fingerprint(cfg)
    with pytest.raises(DropRefused, match="has 0 line.*gate.min_raw_lines=1"):
        ingest_lines(cfg, DS, [])
    assert fingerprint(cfg) == before  # the good earlier run of the day is kept


def test_empty_day_is_ingested_when_the_gate_allows_it(cfg):
    ingest_lines(cfg, DS, [], min_raw_lines=0)
    assert delta.read(cfg, EVENTS, where={"ds": DS}).num_rows == 0
    assert delta.current_version(cfg, EVENTS) is not None


def test_oversize_drop_is_refused_unread(cfg):
    before = fingerprint(cfg)
    with pytest.raises(DropRefused, match="above gate.max_drop_bytes=1,000; nothing was read"):
        ingest_lines(cfg, DS, bad_event_lines(DS, TRACKS, good=100)[0], max_drop_bytes=1000)
    assert fingerprint(cfg) == before


def test_quarantine_share_above_the_gate_fails_loudly_and_publish_refuses(cfg):
    lines, expected = bad_event_lines(DS, TRACKS, good=20)
    with pytest.raises(QuarantineShareExceeded, match="above gate.max_quarantine_share=20.0%"):
        ingest_lines(cfg, DS, lines)
    assert delta.read(cfg, QUARANTINE, where={"ds": DS, "source": "events"}).num_rows == sum(expected.values())
    with pytest.raises(QuarantineShareExceeded):
        publish.check_gates(cfg, DS)


def test_catalog_quarantines_bad_items_with_reasons_and_accounts_for_every_line(cfg):
    ds = shift(DS, 1)
    lines = [catalog_line("trk_000009"), catalog_line("trk_000009", "Song (remaster)"), b"\xff{}", b"{", b"[]",
             catalog_line("trk_000010", duration_ms=-1), catalog_line("trk_000011", duration_ms="3:20"),
             catalog_line("trk_000012", mood="sad"), json.dumps({"item_id": "trk_000013", "item_type": "track"}).encode()]
    write_drop(Path(cfg.landing_uri), "catalog", ds, lines, files=1)
    result = catalog.run(ds, cfg)
    reasons = Counter(delta.read(cfg, QUARANTINE, where={"ds": ds, "source": "catalog"}).column("reason").to_pylist())
    assert reasons == {"non_utf8": 1, "invalid_json": 2, "invalid_duration": 1, "wrong_type": 1, "schema_drift": 1,
                       "missing_field": 1}
    assert (result.metrics["catalog_rows"], result.metrics["superseded_rows"]) == (1, 1)
    item = delta.read(cfg, ITEMS, where={"item_id": "trk_000009"}).to_pylist()[0]
    assert item["title"] == "Song (remaster)"  # the later line of the drop wins


def test_catalog_days_merged_out_of_order_give_the_same_items(cfg, tmp_path, mlflow_store):
    later = shift(DS, 1)
    write_drop(Path(cfg.landing_uri), "catalog", later, [catalog_line("trk_000001", "Edited"),
                                                          catalog_line("trk_000100", "New")], files=1)
    catalog.run(later, cfg)
    other = load_config(overrides={"paths.state_dir": str(tmp_path / "other"), **mlflow_store,
                                   "paths.landing_uri": cfg.landing_uri})
    for ds in (later, DS):  # a backfill that reached the later day first
        catalog.run(ds, other)
    assert fingerprint(other, [ITEMS]) == fingerprint(cfg, [ITEMS])
    edited = delta.read(other, ITEMS, where={"item_id": "trk_000001"}).to_pylist()[0]
    assert (edited["first_seen_ds"], edited["updated_ds"], edited["title"]) == (DS, later, "Edited")


# --- the lake: atomic commits, retries, crash safety, path safety -----------------------------

def sequences(ds: str, writer: int, rows: int = 3) -> pa.Table:
    return pa.Table.from_pylist([{"user_id": f"u{i}", "item_idx": [writer], "event_type": [1], "ts": [0],
                                  "events_in_window": writer, "last_ts": None, "ds": ds} for i in range(rows)],
                                schema=USER_SEQUENCES.schema)


def test_concurrent_partition_writes_all_commit_and_never_mix(lake_cfg):
    failures = []

    def writer(n: int, ds: str) -> None:
        for _ in range(6):
            try:
                delta.replace_partition(lake_cfg, USER_SEQUENCES, sequences(ds, n), {"ds": ds})
            except Exception as err:  # noqa: BLE001
                failures.append(err)

    threads = [threading.Thread(target=writer, args=(n, ds)) for n, ds in enumerate([DS, DS, "2026-01-02", "2026-01-03"])]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not failures
    rows = delta.read(lake_cfg, USER_SEQUENCES).to_pylist()
    by_day = {ds: {r["events_in_window"] for r in rows if r["ds"] == ds} for ds in {r["ds"] for r in rows}}
    assert len(rows) == 9 and all(len(writers) == 1 for writers in by_day.values())  # one writer's rows per day


def vocab(*pairs: tuple[str, int]) -> pa.Table:
    return pa.Table.from_pylist([{"item_id": i, "item_idx": n, "first_seen_ds": DS} for i, n in pairs],
                                schema=ITEM_VOCAB.schema)


def test_concurrent_vocabulary_appends_never_duplicate_an_item_or_an_id(lake_cfg):
    delta.append(lake_cfg, ITEM_VOCAB, vocab(("a", 1)))
    errors = []

    def writer() -> None:
        try:
            delta.append(lake_cfg, ITEM_VOCAB, vocab(("b", 2), ("c", 3)))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert sorted(map(tuple, (r.values() for r in delta.read(lake_cfg, ITEM_VOCAB, columns=["item_id",
                                                                                            "item_idx"]).to_pylist()))) == \
        [("a", 1), ("b", 2), ("c", 3)]


def test_vocabulary_append_refuses_an_id_another_run_gave_to_another_item(lake_cfg):
    delta.append(lake_cfg, ITEM_VOCAB, vocab(("a", 1), ("b", 2)))
    with pytest.raises(ConcurrentWriteError, match="rerun the step"):
        delta.append(lake_cfg, ITEM_VOCAB, vocab(("c", 2), ("d", 3)))
    ids = delta.read(lake_cfg, ITEM_VOCAB).column("item_idx").to_pylist()
    assert len(ids) == len(set(ids))


def test_a_write_that_keeps_losing_races_gives_up_with_one_sentence(lake_cfg, monkeypatch):
    def always_conflict(*args, **kwargs):
        raise CommitFailedError("a concurrent transaction added new data")

    monkeypatch.setattr(delta, "write_deltalake", always_conflict)
    monkeypatch.setattr(delta.time, "sleep", lambda seconds: None)
    with pytest.raises(ConcurrentWriteError, match="lost 6 commits in a row"):
        delta.replace_partition(lake_cfg, USER_SEQUENCES, sequences(DS, 1), {"ds": DS})


def test_a_writer_killed_before_its_commit_leaves_the_table_unchanged(lake_cfg, tmp_path):
    delta.replace_partition(lake_cfg, USER_SEQUENCES, sequences(DS, 1), {"ds": DS})
    before, version = fingerprint(lake_cfg, [USER_SEQUENCES]), delta.current_version(lake_cfg, USER_SEQUENCES)
    marker = tmp_path / "paused"
    script = "\n".join([
        "from pathlib import Path", "import pyarrow as pa", "from jobs.config import load_config",
        "from jobs.faults.inject import Pause, pause_before_commit", "from jobs.lakehouse import delta",
        "from jobs.lakehouse.tables import USER_SEQUENCES",
        f"pause_before_commit(Pause(('user_sequences',), Path({str(marker)!r})))",
        "rows = [dict(user_id=f'u{i}', item_idx=[2], event_type=[1], ts=[0], events_in_window=2, "
        f"ds={DS!r}) for i in range(40000)]",
        f"cfg = load_config(overrides={{'paths.state_dir': {str(tmp_path)!r}}})",
        "delta.replace_partition(cfg, USER_SEQUENCES, pa.Table.from_pylist(rows, schema=USER_SEQUENCES.schema), "
        f"{{'ds': {DS!r}}})",
    ])
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), process.stderr.read().decode()[-2000:]
    while orphan_files(lake_cfg, USER_SEQUENCES) == 0 and time.time() < deadline:  # delta-rs flushes in its own thread
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert orphan_files(lake_cfg, USER_SEQUENCES) >= 1  # files were written, never committed
    assert delta.current_version(lake_cfg, USER_SEQUENCES) == version
    assert fingerprint(lake_cfg, [USER_SEQUENCES]) == before  # no half-written partition is visible
    delta.replace_partition(lake_cfg, USER_SEQUENCES, sequences(DS, 2, rows=40000), {"ds": DS})  # the rerun
    assert delta.read(lake_cfg, USER_SEQUENCES).num_rows == 40000


@pytest.mark.parametrize("where", [{"ds": "../../etc"}, {"ds": "2026-01-01' OR '1'='1"}, {"ds": "a/b"},
                                   {"ds": ".."}, {"nope": DS}])
def test_partition_values_cannot_leave_their_partition_or_the_predicate(lake_cfg, where):
    with pytest.raises(UnsafePath):
        delta.replace_partition(lake_cfg, USER_SEQUENCES, sequences(DS, 1).slice(0, 0), where)


@pytest.mark.parametrize("name", ["../escape", "a/b", "/etc", "Events", ""])
def test_table_names_cannot_leave_the_lake_root(lake_cfg, name):
    spec = TableSpec(name, USER_SEQUENCES.schema, ("user_id",), ("ds",), "features", "")
    with pytest.raises(UnsafePath):
        delta.table_uri(lake_cfg, spec)


@pytest.mark.parametrize("ds", ["2026-01-01/../../x", " 2026-01-01", "2026-01-0\u0661", "2026-1-1", "2026-02-30", None, 20260101])
def test_ds_must_be_an_exact_ascii_date(ds):
    with pytest.raises(FactoryError, match="is not a date in YYYY-MM-DD form"):
        parse_ds(ds)


def test_drop_folders_are_built_only_from_known_sources_and_valid_days(lake_cfg):
    with pytest.raises(FactoryError, match="Unknown drop source"):
        drop_uri(lake_cfg, "../lake", DS)
    with pytest.raises(FactoryError, match="is not a date"):
        drop_uri(lake_cfg, "events", "2026-01-01/../..")


def test_a_relative_landing_path_works_like_an_absolute_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(overrides={"paths.state_dir": str(tmp_path / "state"), "paths.landing_uri": "landing"})
    write_drop(Path("landing"), "events", DS, [b"{}"] * 3)
    assert len(drop_files(cfg, "events", DS)) == 2 and drop_days(cfg, "events") == [DS]


@pytest.mark.parametrize("overrides, message", [
    ({"gate.max_quarantine_share": "1.5"}, "gate.max_quarantine_share must be a share"),
    ({"gate.min_raw_lines": "-1"}, "gate.min_raw_lines must be >= 0"),
    ({"paths.lake_uri": "ftp://host/lake"}, "unsupported scheme"),
    ({"paths.lake_uri": "/data/x", "paths.landing_uri": "/data/x"}, "must differ"),
])
def test_gate_and_path_settings_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


# --- publish gates --------------------------------------------------------------------------

def unit_vectors(n: int, seed: int) -> list[list[float]]:
    x = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).tolist()


def publishable(cfg, ds: str = DS, *, model: tuple[str, str] = ("3", "3"), codes=None, drift: float = 0.9,
                hr: tuple[float, float] = (0.20, 0.19), bad_events: int = 1, items: int = 4) -> None:
    """Write by hand everything publish checks for ds (and the evaluation of the day before)."""
    ids = [f"trk_{i}" for i in range(items)]

    def put(spec, rows, where):
        delta.replace_partition(cfg, spec, pa.Table.from_pylist(rows, schema=spec.schema), where)

    put(EVENTS, [{"event_id": f"e{i}", "user_id": "u1", "item_id": ids[0], "item_type": "track", "event_type": "play",
                  "ts": None, "ms_played": 1, "ds": ds} for i in range(9)], {"ds": ds})
    put(QUARANTINE, [{"source": "events", "source_file": "f", "line_number": i, "reason": "invalid_json",
                      "detail": "", "raw": "{", "raw_bytes": b"{", "ds": ds} for i in range(bad_events)],
        {"ds": ds, "source": "events"})
    put(USER_SEQUENCES, [{"user_id": "u1", "item_idx": [1], "event_type": [1], "ts": [0], "events_in_window": 1,
                          "last_ts": None, "ds": ds}], {"ds": ds})
    put(USER_EMBEDDINGS, [{"user_id": "u1", "embedding": v, "model_version": model[0], "ds": ds}
                          for v in unit_vectors(1, 0)], {"ds": ds})
    vectors = unit_vectors(items, 1)
    put(ITEM_EMBEDDINGS, [{"item_id": i, "item_idx": n + 1, "embedding": v, "model_version": model[1], "ds": ds}
                          for n, (i, v) in enumerate(zip(ids, vectors))], {"ds": ds})
    write_index(cfg, build_index(np.array(vectors, np.float32), np.arange(1, items + 1), "Flat"), index_uri(cfg, ds))
    delta.upsert(cfg, ITEMS, pa.Table.from_pylist([{"item_id": i, "item_type": "track", "title": i, "first_seen_ds": ds,
                                                   "updated_ds": ds} for i in ids], schema=ITEMS.schema))
    delta.upsert(cfg, CODEBOOKS, pa.Table.from_pylist([{"codebook_version": 1, "level": 0, "code": 0, "centroid": [0.0],
                                                       "built_ds": ds, "params": "{}"}], schema=CODEBOOKS.schema))
    codes = codes or [[n, 0] for n in range(items)]
    delta.upsert(cfg, ITEM_TOKENS, pa.Table.from_pylist([{"codebook_version": 1, "item_id": i, "tokens": c + [n],
                                                         "sid": f"{i}", "text_hash": "", "assigned_ds": ds}
                                                        for n, (i, c) in enumerate(zip(ids, codes))], schema=ITEM_TOKENS.schema))
    for day, value, extra in ((shift(ds, -1), hr[0], []), (ds, hr[1], [("drift_mean_cosine", drift)])):
        put(EVAL_METRICS, [{"ds": day, "embeddings_ds": shift(day, -1), "model_version": model[0], "method": "encoder",
                            "metric": metric, "value": v} for metric, v in [("hr_at_10", value), *extra]], {"ds": day})


def test_a_complete_day_passes_the_gates_and_reports_what_it_measured(lake_cfg):
    publishable(lake_cfg)
    measured = {}
    assert publish.check_gates(lake_cfg, DS, measured) == {"model_version": "3", "codebook_version": 1}
    assert measured == pytest.approx({"raw_rows": 10, "quarantine_share": 0.1, "max_norm_error": 0.0,
                                      "collision_rate_before_dedup": 0.0, "drift_mean_cosine": 0.9, "hr_at_k": 0.19,
                                      "hr_at_k_previous": 0.2, "hr_drop": 0.05}, abs=1e-6)


@pytest.mark.parametrize("change, message", [
    ({"codes": [[0, 0]] * 4}, "collision rate before de-duplication of 1.000, above gate.max_collision_rate"),
    ({"drift": 0.05}, "below gate.min_drift_cosine"),
    ({"hr": (0.20, 0.05)}, "next-day HR@10 fell from 0.2000"),
    ({"model": ("3", "4")}, "rerun the embed step so both come from one model"),
    ({"bad_events": 5}, "above gate.max_quarantine_share"),
])
def test_a_day_that_regresses_or_is_partial_is_not_published(lake_cfg, change, message):
    publishable(lake_cfg, **change)
    with pytest.raises(GateFailed, match=message):
        publish.check_gates(lake_cfg, DS)


def test_vectors_of_a_diverged_model_block_the_day(lake_cfg):
    publishable(lake_cfg)
    users = delta.read(lake_cfg, USER_EMBEDDINGS).to_pylist()
    users[0]["embedding"] = [float("nan")] * 4
    delta.replace_partition(lake_cfg, USER_EMBEDDINGS, pa.Table.from_pylist(users, schema=USER_EMBEDDINGS.schema), {"ds": DS})
    with pytest.raises(GateFailed, match="not finite unit vectors"):
        publish.check_gates(lake_cfg, DS)


def test_an_item_without_a_semantic_id_blocks_the_day(lake_cfg):
    publishable(lake_cfg)
    delta.upsert(lake_cfg, ITEMS, pa.Table.from_pylist([{"item_id": "trk_new", "item_type": "track", "title": "x",
                                                        "first_seen_ds": DS, "updated_ds": DS}], schema=ITEMS.schema))
    with pytest.raises(GateFailed, match="1 of 5 items have no SID in codebook 1"):
        publish.check_gates(lake_cfg, DS)


def test_a_codebook_that_collides_more_than_the_serving_one_is_not_published(lake_cfg):
    publishable(lake_cfg, codes=[[0, 0], [0, 0], [1, 0], [2, 0]])  # half the items collide
    serving = {"ds": shift(DS, -1), "model_version": "3", "codebook_version": 0, "index_uri": "", "table_versions": "{}",
               "published_at": None}
    delta.replace_partition(lake_cfg, publish.PUBLISH, pa.Table.from_pylist([serving], schema=publish.PUBLISH.schema),
                           {"ds": shift(DS, -1)})
    delta.upsert(lake_cfg, ITEM_TOKENS, pa.Table.from_pylist([{"codebook_version": 0, "item_id": f"trk_{i}",
                                                              "tokens": [i, 0, 0], "sid": str(i)} for i in range(4)],
                                                            schema=ITEM_TOKENS.schema))
    with pytest.raises(GateFailed, match="collides more than the serving codebook 0 \\(0.500 vs 0.000"):
        publish.check_gates(lake_cfg, DS)


def test_gates_check_the_pinned_versions_not_what_was_committed_later(lake_cfg):
    publishable(lake_cfg)
    pinned = publish.pinned_versions(lake_cfg)
    delta.replace_partition(lake_cfg, ITEM_EMBEDDINGS, pa.Table.from_pylist([], schema=ITEM_EMBEDDINGS.schema), {"ds": DS})
    assert publish.check_gates(lake_cfg, DS, versions=pinned)["model_version"] == "3"
    with pytest.raises(FactoryError, match="item_embeddings has no rows"):
        publish.check_gates(lake_cfg, DS)


def test_publish_refusal_is_recorded_in_its_mlflow_run(lake_cfg, mlflow_store):
    import mlflow

    cfg = with_overrides(lake_cfg, mlflow={"tracking_uri": mlflow_store["mlflow.tracking_uri"]})
    publishable(cfg, drift=0.0)
    with pytest.raises(GateFailed):
        publish.run(DS, cfg)
    assert publish.latest_published(cfg) is None
    run = mlflow.MlflowClient().search_runs([mlflow.get_experiment_by_name(cfg.mlflow.experiment).experiment_id],
                                            filter_string="tags.`factory.step` = 'publish'", max_results=1)[0]
    assert run.info.status == "FAILED"
    assert run.data.params["gate_decision"] == "refused" and "min_drift_cosine" in run.data.params["gate_reason"]
    assert run.data.metrics["gate.drift_mean_cosine"] == 0.0


# --- invocations: one clear sentence --------------------------------------------------------

@pytest.mark.parametrize("section, key, address, step", [
    ("mlflow", "tracking_uri", "http://127.0.0.1:9", "catalog"),
    ("spark", "master", "spark://127.0.0.1:9", "features"),
    ("spark", "master", "k8s://https://127.0.0.1:9", "features"),
    ("ray", "address", "ray://127.0.0.1:9", "embed"),
])
def test_an_unreachable_endpoint_is_one_sentence_naming_the_configured_address(lake_cfg, section, key, address, step):
    cfg = with_overrides(lake_cfg, **{section: {key: address}})
    with pytest.raises(FactoryError, match=f"Cannot reach .* at {re.escape(address)} \\(set by {section}.{key}"):
        pipeline.preflight(cfg, step, DS)


def test_an_unwritable_lake_is_one_sentence(tmp_path):
    (tmp_path / "file").write_text("")
    cfg = load_config(overrides={"paths.state_dir": str(tmp_path), "paths.lake_uri": str(tmp_path / "file" / "lake")})
    with pytest.raises(FactoryError, match="The lake at .*file/lake is not writable"):
        pipeline.preflight(cfg, "catalog", DS)


def test_a_ds_before_the_first_data_is_one_sentence(cfg):
    write_drop(Path(cfg.landing_uri), "events", DS, [], files=1)
    with pytest.raises(FactoryError, match=f"ds=2025-12-31 is before the first data \\({DS}"):
        pipeline.preflight(cfg, "features", "2025-12-31")
    pipeline.preflight(cfg, "features", DS)


def test_a_step_without_any_data_yet_is_one_sentence(lake_cfg):
    with pytest.raises(FactoryError, match="There is no data yet"):
        pipeline.preflight(lake_cfg, "features", DS)


def test_a_step_that_lost_a_write_race_is_rerun(lake_cfg, monkeypatch):
    calls = []

    class FlakyStep:
        @staticmethod
        def run(ds, cfg, run_key=None):
            calls.append(ds)
            if len(calls) == 1:
                raise ConcurrentWriteError("item_vocab: another run added conflicting rows")
            return StepResult("index", ds, notes=["done"])

    monkeypatch.setattr(pipeline, "preflight", lambda cfg, step, ds: None)
    monkeypatch.setattr(pipeline, "step_function", lambda step: FlakyStep.run)
    assert pipeline.run_step("index", DS, lake_cfg).notes == ["done"] and len(calls) == 2


def test_cli_prints_an_unreachable_mlflow_as_one_line(tmp_path):
    env = {"FACTORY__PATHS__STATE_DIR": str(tmp_path), "FACTORY__MLFLOW__TRACKING_URI": "http://127.0.0.1:9",
           "PATH": "/usr/bin:/bin", "COLUMNS": "300"}
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "run", "--ds", DS, "--step", "catalog"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        "error: Cannot reach the MLflow tracking server at http://127.0.0.1:9 (set by mlflow.tracking_uri or "
        "FACTORY__MLFLOW__TRACKING_URI): connection refused; start it or fix the address."]


# --- security basics --------------------------------------------------------------------------

def test_local_airflow_and_mlflow_ui_listen_on_localhost_only(lake_cfg, monkeypatch):
    from typer.testing import CliRunner

    from jobs import cli
    from jobs.runtime.airflow_env import airflow_env

    monkeypatch.delenv("AIRFLOW__API__HOST", raising=False)
    assert airflow_env(lake_cfg)["AIRFLOW__API__HOST"] == "127.0.0.1"
    started = []
    monkeypatch.setattr(cli.subprocess, "call", lambda args: started.append(args) or 0)
    monkeypatch.setenv("FACTORY__PATHS__STATE_DIR", lake_cfg.paths.state_dir)
    assert CliRunner().invoke(cli.app, ["mlflow-ui"]).exit_code == 0
    assert started[0][started[0].index("--host") + 1] == "127.0.0.1"


SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)(password|secret|token|access_key)[\"']?\s*[:=]\s*[\"'][^\"'$<{\s]{8,}[\"']"),  # a literal value
    re.compile(r"(?i)://[^/\s:@$]+:[^/\s@${]{6,}@"),  # user:password@ inside a URL
]
PLACEHOLDERS = ("change-me", "USER:PASSWORD")  # how the examples and docs spell values to fill in


def test_no_credentials_are_committed():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for name in tracked:
        path = REPO / name
        if not path.is_file() or path.stat().st_size > 1_000_000 or name == "tests/faults/test_reliability.py":
            continue
        text = path.read_text(errors="ignore")
        hits += [f"{name}: {m.group(0)[:40]}" for pattern in SECRET_PATTERNS for m in pattern.finditer(text)
                 if not any(placeholder in m.group(0) for placeholder in PLACEHOLDERS)]
    assert not hits


def _results(summary: str, rows: dict[str, str]) -> str:
    return "\n".join([summary, "", "| scenario | how | observed | rows checked | rows lost | result |",
                      "|---|---|---|---|---|---|",
                      *(f"| {name} | h | o |  |  | {result} |" for name, result in rows.items())])


def test_a_partial_faults_run_replaces_only_the_rows_it_ran(tmp_path):
    doc = tmp_path / "reliability.md"
    results = _results("full run", {"a": "pass", "b": "**FAIL**", "c": "pass"})
    doc.write_text(f"# Reliability\n\n{BEGIN}\n{results}\n{END}\ntail\n")
    write_results(doc, _results("Observed on today: partial", {"b": "pass"}), partial=True)
    text = doc.read_text()
    block = text[text.index(BEGIN):text.index(END)]
    rows = [line for line in block.splitlines() if line.startswith("| ") and "scenario" not in line]
    assert [line.split("|")[-2].strip() for line in rows] == ["pass"] * 3
    assert "full run" in block and "Re-run on today: partial" in block and text.endswith("tail\n")


def test_each_partial_faults_run_keeps_the_lines_of_the_earlier_ones(tmp_path):
    doc = tmp_path / "reliability.md"
    doc.write_text(f"{BEGIN}\n{_results('full run', {'a': 'pass', 'b': 'pass'})}\n{END}\n")
    write_results(doc, _results("Observed on monday: a only", {"a": "pass"}), partial=True)
    write_results(doc, _results("Observed on tuesday: new scenario", {"n": "pass"}), partial=True)
    block = doc.read_text()
    assert "full run" in block and "Re-run on monday: a only" in block and "Re-run on tuesday: new scenario" in block
    rows = [line.split("|")[1].strip() for line in block.splitlines() if line.startswith("| ") and "scenario" not in line]
    assert rows == ["a", "b", "n"]


def test_the_fault_worlds_step_by_step_day_runs_every_step_of_the_dag_in_order():
    """Day 3 of the fault world runs one process per step; a step missing there (profile once was)
    makes "backfill = daily runs" compare against a day without that step's table rows."""
    from jobs.faults.world import STAGE_NAMES, stage_commands
    from jobs.steps import STEP_NAMES

    days = [shift("2026-01-01", i) for i in range(7)]
    stages = stage_commands(days)
    assert tuple(name for name, _ in stages) == STAGE_NAMES
    day3 = [command[command.index("--step") + 1] for _, commands in stages for command in commands
            if command[:3] == ["run", "--ds", days[2]]]
    assert tuple(day3) == STEP_NAMES
