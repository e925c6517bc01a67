"""The commit protocol: engines write Parquet files into a writer folder, the driver commits their metadata."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.errors import ConcurrentWriteError
from jobs.faults.world import orphan_files
from jobs.lakehouse import commit, delta
from jobs.lakehouse.tables import ALL_TABLES, QUARANTINE, USER_SEQUENCES, TableSpec
from tests import REPO

DS = "2026-01-05"


def sequences(ds: str, writer: int, rows: int = 3, first: int = 0) -> pa.Table:
    return pa.Table.from_pylist([
        {"user_id": f"u{i:05d}", "item_idx": [writer, i], "event_type": [1, 2], "ts": [i, i + 1],
         "events_in_window": writer, "last_ts": dt.datetime(2026, 1, 5, 12, i % 60, tzinfo=dt.UTC), "ds": ds}
        for i in range(first, first + rows)], schema=USER_SEQUENCES.schema)


def engine_write(folder: commit.WriterFolder, data: pa.Table, files: int = 2) -> None:
    """What an executor or actor does: Parquet files of the data columns in the writer folder."""
    Path(folder.uri).mkdir(parents=True, exist_ok=True)
    step = -(-data.num_rows // files) or 1
    for n, start in enumerate(range(0, max(data.num_rows, 1), step)):
        pq.write_table(data.slice(start, step).select(folder.columns), f"{folder.uri}/part-{n:05d}.parquet")


def staged(cfg, spec: TableSpec, data: pa.Table, partition: dict[str, str], files: int = 2) -> commit.WriterFolder:
    folder = commit.writer_folder(cfg, spec, partition)
    engine_write(folder, data, files)
    return folder


def rows(cfg, spec: TableSpec, **kwargs) -> list[dict]:
    order = (*spec.partition_by, *spec.key)
    return sorted(delta.read(cfg, spec, **kwargs).to_pylist(), key=lambda r: tuple(str(r[k]) for k in order))


def test_replacing_a_partition_swaps_its_files_in_one_version_and_leaves_other_days(lake_cfg):
    commit.commit_replace(lake_cfg, staged(lake_cfg, USER_SEQUENCES, sequences(DS, 1), {"ds": DS}))
    commit.commit_replace(lake_cfg, staged(lake_cfg, USER_SEQUENCES, sequences("2026-01-06", 2), {"ds": "2026-01-06"}))
    before = delta.current_version(lake_cfg, USER_SEQUENCES)
    version = commit.commit_replace(lake_cfg, staged(lake_cfg, USER_SEQUENCES, sequences(DS, 3, rows=5), {"ds": DS}))
    assert version == before + 1
    assert rows(lake_cfg, USER_SEQUENCES, where={"ds": DS}) == sequences(DS, 3, rows=5).to_pylist()
    assert rows(lake_cfg, USER_SEQUENCES, where={"ds": "2026-01-06"}) == sequences("2026-01-06", 2).to_pylist()
    assert rows(lake_cfg, USER_SEQUENCES, version=before, where={"ds": DS}) == sequences(DS, 1).to_pylist()
    assert delta.history(lake_cfg, USER_SEQUENCES, 1)[0]["operationParameters"]["mode"] == "Overwrite"


def test_engine_files_read_back_equal_to_the_arrow_path(lake_cfg, tmp_path):
    from jobs.config import load_config

    arrow_cfg = load_config(overrides={"paths.state_dir": str(tmp_path / "arrow")})
    data = sequences(DS, 4, rows=50)
    delta.replace_partition(arrow_cfg, USER_SEQUENCES, data, {"ds": DS})
    commit.commit_replace(lake_cfg, staged(lake_cfg, USER_SEQUENCES, data, {"ds": DS}, files=3))
    assert delta.read(lake_cfg, USER_SEQUENCES).sort_by("user_id").equals(
        delta.read(arrow_cfg, USER_SEQUENCES).sort_by("user_id"))
    stats = [a for a in commit.file_actions(staged(lake_cfg, USER_SEQUENCES, data, {"ds": DS}, files=1))]
    assert '"numRecords": 50' in stats[0].stats and '"minValues": {"user_id": "u00000"' in stats[0].stats


def test_a_partition_column_below_the_writer_folder_comes_from_its_hive_folder(lake_cfg):
    """Quarantine is partitioned by (ds, source): an engine may write source=... folders below the writer folder."""
    row = {"source": "events", "source_file": "f.jsonl", "line_number": 3, "reason": "bad_json", "detail": "",
           "raw": "{", "raw_bytes": b"{\xff", "ds": DS}
    folder = commit.writer_folder(lake_cfg, QUARANTINE, {"ds": DS})
    (Path(folder.uri) / "source=events").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row], schema=QUARANTINE.schema).select(folder.columns),
                   f"{folder.uri}/source=events/part-0.parquet")
    commit.commit_replace(lake_cfg, folder, where={"ds": DS, "source": "events"})
    assert delta.read(lake_cfg, QUARANTINE, where={"ds": DS, "source": "events"}).to_pylist() == [row]


def test_an_engines_marker_and_leftover_files_are_deleted_not_committed(lake_cfg):
    folder = staged(lake_cfg, USER_SEQUENCES, sequences(DS, 1), {"ds": DS}, files=1)
    (Path(folder.uri) / "_temporary" / "0").mkdir(parents=True)
    for name in ("_SUCCESS", ".part-00000.parquet.crc", "_temporary/0/part-00009.parquet"):
        (Path(folder.uri) / name).write_bytes(b"x")
    assert [Path(a.path).name for a in commit.file_actions(folder)] == ["part-00000.parquet"]
    assert sorted(p.name for p in Path(folder.uri).rglob("*") if p.is_file()) == ["part-00000.parquet"]


def test_files_outside_the_replaced_partition_or_in_other_types_are_refused(lake_cfg):
    with pytest.raises(ValueError, match="outside the replaced partition"):
        commit.commit_replace(lake_cfg, staged(lake_cfg, USER_SEQUENCES, sequences(DS, 1), {"ds": DS}),
                              where={"ds": "2026-01-06"})
    folder = commit.writer_folder(lake_cfg, USER_SEQUENCES, {"ds": DS})
    Path(folder.uri).mkdir(parents=True)
    data = sequences(DS, 1).select(folder.columns)
    pq.write_table(data.set_column(5, "last_ts", data.column("last_ts").cast(pa.timestamp("ns", tz="UTC"))),
                   f"{folder.uri}/part-0.parquet")
    with pytest.raises(ValueError, match="stores last_ts as timestamp"):
        commit.commit_replace(lake_cfg, folder)
    assert delta.current_version(lake_cfg, USER_SEQUENCES) is None


def test_insert_only_append_commits_new_keys_and_refuses_when_the_table_moved(lake_cfg):
    version = commit.commit_replace(lake_cfg, staged(lake_cfg, USER_SEQUENCES, sequences(DS, 1), {"ds": DS}))
    # The engine's anti-join against `version` found u00003..u00004 new.
    new = staged(lake_cfg, USER_SEQUENCES, sequences(DS, 1, rows=2, first=3), {"ds": DS})
    racing = staged(lake_cfg, USER_SEQUENCES, sequences(DS, 9, rows=2, first=3), {"ds": DS})
    appended = commit.commit_append(lake_cfg, new, read_version=version)
    assert appended == version + 1
    with pytest.raises(ConcurrentWriteError, match="rerun the step"):
        commit.commit_append(lake_cfg, racing, read_version=version)  # computed against the old version
    assert rows(lake_cfg, USER_SEQUENCES) == sequences(DS, 1, rows=5).to_pylist()


def test_a_concurrent_commit_of_the_same_partition_is_detected_and_the_replace_redone(lake_cfg, monkeypatch):
    commit.commit_replace(lake_cfg, staged(lake_cfg, USER_SEQUENCES, sequences(DS, 1), {"ds": DS}))
    other = staged(lake_cfg, USER_SEQUENCES, sequences(DS, 2), {"ds": DS})
    ours = staged(lake_cfg, USER_SEQUENCES, sequences(DS, 3, rows=4), {"ds": DS})
    calls = []

    def other_writer_commits_first(spec, actions):  # between our snapshot and our commit
        calls.append(len(actions))
        if len(calls) == 1:
            monkeypatch.setattr(commit, "before_commit", lambda spec, actions: calls.append(len(actions)))
            commit.commit_replace(lake_cfg, other)

    monkeypatch.setattr(commit, "before_commit", other_writer_commits_first)
    version = commit.commit_replace(lake_cfg, ours)
    assert calls == [2, 2, 2]  # ours, the other's, ours again after the conflict
    assert version == 2 and rows(lake_cfg, USER_SEQUENCES) == sequences(DS, 3, rows=4).to_pylist()


def test_two_writers_of_a_new_partition_conflict_and_the_partition_holds_one_writers_rows(lake_cfg, monkeypatch):
    """delta-rs sees no conflict between two overwrites of a partition with no files: without the
    claim, both commit and the day holds both writers' rows (the fault suite's "one day twice")."""
    commit.commit_replace(lake_cfg, staged(lake_cfg, USER_SEQUENCES, sequences("2026-01-04", 9), {"ds": "2026-01-04"}))
    other = staged(lake_cfg, USER_SEQUENCES, sequences(DS, 2), {"ds": DS})
    ours = staged(lake_cfg, USER_SEQUENCES, sequences(DS, 3, rows=4), {"ds": DS})
    calls = []

    def other_writer_commits_between_our_snapshot_and_our_commit(spec, actions):
        calls.append(len(actions))
        if len(actions) == 2 and calls.count(2) == 1:  # our overwrite, the first time
            commit.commit_replace(lake_cfg, other)

    monkeypatch.setattr(commit, "before_commit", other_writer_commits_between_our_snapshot_and_our_commit)
    commit.commit_replace(lake_cfg, ours)
    assert calls == [1, 2, 2, 2]  # our claim, our overwrite, the other's overwrite, ours again after the conflict
    assert rows(lake_cfg, USER_SEQUENCES, where={"ds": DS}) == sequences(DS, 3, rows=4).to_pylist()
    assert rows(lake_cfg, USER_SEQUENCES, where={"ds": "2026-01-04"}) == sequences("2026-01-04", 9).to_pylist()


def test_concurrent_writers_of_one_partition_all_commit_and_never_mix(lake_cfg):
    failures = []

    def writer(n: int) -> None:
        try:
            commit.commit_replace(lake_cfg, staged(lake_cfg, USER_SEQUENCES, sequences(DS, n), {"ds": DS}))
        except Exception as err:  # noqa: BLE001 - reported below
            failures.append(err)

    threads = [threading.Thread(target=writer, args=(n,)) for n in (1, 2, 3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert failures == [] and delta.current_version(lake_cfg, USER_SEQUENCES) == 2
    assert len({r["events_in_window"] for r in rows(lake_cfg, USER_SEQUENCES)}) == 1  # one writer's rows only


def test_a_writer_killed_before_its_commit_leaves_invisible_files_that_vacuum_removes(lake_cfg, tmp_path):
    commit.commit_replace(lake_cfg, staged(lake_cfg, USER_SEQUENCES, sequences(DS, 1), {"ds": DS}))
    replaced = staged(lake_cfg, USER_SEQUENCES, sequences(DS, 2), {"ds": DS})
    commit.commit_replace(lake_cfg, replaced)  # leaves the first writer's files unreferenced too
    before = rows(lake_cfg, USER_SEQUENCES)
    marker = tmp_path / "paused"
    script = "\n".join([
        "from pathlib import Path", "from jobs.config import load_config",
        "from jobs.faults.inject import Pause, pause_before_commit", "from jobs.lakehouse import commit",
        "from jobs.lakehouse.tables import USER_SEQUENCES", "from tests.lakehouse.test_commit import sequences, staged",
        f"pause_before_commit(Pause(('user_sequences',), Path({str(marker)!r})))",
        f"cfg = load_config(overrides={{'paths.state_dir': {str(tmp_path)!r}}})",
        f"commit.commit_replace(cfg, staged(cfg, USER_SEQUENCES, sequences({DS!r}, 7, rows=100), {{'ds': {DS!r}}}))",
    ])
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), process.stderr.read().decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert orphan_files(lake_cfg, USER_SEQUENCES) == 2  # the killed writer's files, in no log entry
    assert rows(lake_cfg, USER_SEQUENCES) == before  # nothing of the killed writer is visible
    assert commit.vacuum(lake_cfg, USER_SEQUENCES) == []  # younger than the retention: kept
    removed = commit.vacuum(lake_cfg, USER_SEQUENCES, retention_hours=0)
    assert len(removed) == 4 and orphan_files(lake_cfg, USER_SEQUENCES) == 0  # and the two replaced ones
    assert rows(lake_cfg, USER_SEQUENCES) == before


def test_every_table_states_its_scale_and_small_tables_their_row_bound():
    for spec in ALL_TABLES:
        assert (spec.scale == "small") == (spec.small_below is not None), spec.name
    assert {s.name for s in ALL_TABLES if s.scale != "small"} == {"events", "quarantine", "user_sequences", "user_embeddings",
                                                                     "taste_profiles"}


def test_spark_executors_write_a_partition_equal_to_the_arrow_path(lake_cfg, tmp_path):
    from jobs.config import load_config
    from jobs.lakehouse.spark import read_snapshot, spark_session, write_partition

    arrow_cfg = load_config(overrides={"paths.state_dir": str(tmp_path / "arrow")})
    data = sequences(DS, 5, rows=40)
    delta.replace_partition(arrow_cfg, USER_SEQUENCES, data, {"ds": DS})
    frame = spark_session(lake_cfg).createDataFrame(data.to_pandas()).repartition(3)
    write_partition(lake_cfg, frame, USER_SEQUENCES, {"ds": DS})
    assert delta.read(lake_cfg, USER_SEQUENCES).sort_by("user_id").equals(
        delta.read(arrow_cfg, USER_SEQUENCES).sort_by("user_id"))
    # A table of both kinds of files (a lake written before the commit protocol) reads as one, in
    # delta-rs and in Spark.
    older = sequences("2026-01-04", 6, rows=5)
    delta.replace_partition(lake_cfg, USER_SEQUENCES, older, {"ds": "2026-01-04"})
    both = delta.read(lake_cfg, USER_SEQUENCES)
    assert both.num_rows == 45 and rows(lake_cfg, USER_SEQUENCES, where={"ds": "2026-01-04"}) == older.to_pylist()
    _, frame = read_snapshot(lake_cfg, USER_SEQUENCES)
    assert sorted(r["ds"] for r in frame.groupBy("ds").count().collect()) == ["2026-01-04", DS]
    leftovers = [p.name for p in Path(delta.table_uri(lake_cfg, USER_SEQUENCES)).rglob("*")
                 if p.is_file() and "_delta_log" not in p.parts and not p.name.endswith(".parquet")]
    assert leftovers == []  # no _SUCCESS or .crc files that vacuum would never remove


def test_factory_lake_vacuum_deletes_a_killed_writers_files(lake_cfg):
    commit.commit_replace(lake_cfg, staged(lake_cfg, USER_SEQUENCES, sequences(DS, 1), {"ds": DS}))
    staged(lake_cfg, USER_SEQUENCES, sequences(DS, 2), {"ds": DS})  # never committed
    env = {"FACTORY__PATHS__STATE_DIR": lake_cfg.paths.state_dir, "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    args = [sys.executable, "-m", "jobs.cli", "lake", "vacuum", "--table", "user_sequences", "--retention-hours", "0"]
    dry = subprocess.run([*args, "--dry-run"], capture_output=True, text=True, env=env, cwd=REPO)
    assert "user_sequences: 2 file(s) to delete" in dry.stdout, dry.stderr
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)
    assert "user_sequences: 2 file(s) deleted" in done.stdout, done.stderr
    assert orphan_files(lake_cfg, USER_SEQUENCES) == 0 and rows(lake_cfg, USER_SEQUENCES) == sequences(DS, 1).to_pylist()


def test_committed_rows_are_counted_from_the_log_without_reading_data(lake_cfg):
    commit.commit_replace(lake_cfg, staged(lake_cfg, USER_SEQUENCES, sequences(DS, 1, rows=7), {"ds": DS}, files=3))
    delta.replace_partition(lake_cfg, USER_SEQUENCES, sequences("2026-01-06", 1, rows=4), {"ds": "2026-01-06"})
    assert commit.committed_rows(lake_cfg, USER_SEQUENCES, {"ds": DS}) == 7
    assert commit.committed_rows(lake_cfg, USER_SEQUENCES, {"ds": "2026-01-06"}) == 4  # the Arrow path's files too
    assert commit.committed_rows(lake_cfg, USER_SEQUENCES, {"ds": "2026-01-07"}) == 0
