"""Reading and writing the lake's Delta tables through delta-rs (`deltalake`).

Why delta-rs and not Spark's Delta writer: Delta's Spark jars come only from Maven, which this
project cannot assume; delta-rs is a PyPI wheel and writes standard Delta tables that Spark, Trino,
DuckDB or delta-spark open unchanged. Spark and Ray read a consistent snapshot through
`snapshot_files` (the Parquet files of one table version) and hand their output back as Arrow.

This module is the Arrow path, for the small tables (TableSpec.scale == "small"): the rows pass through
the driver. The large tables' files are written by Spark executors or Ray actors and only their
metadata is committed here (jobs.lakehouse.commit). There is no Spark Delta writer (delta-spark):
its jars come only from Maven, which cannot be reached here, so it could never run or be tested,
and the commit protocol gives distributed writes without it.

Every write is idempotent for its key: `replace_partition` is Delta's replaceWhere (a predicate
overwrite in one atomic commit), `upsert` is a MERGE that changes nothing when nothing changed,
`append` inserts only keys the table does not have yet.

Crash safety and concurrency (docs/reliability.md): a write puts its Parquet files first and then
commits one log entry; a process killed before the commit leaves only unreferenced files that no
reader sees. Writers are optimistic: when another writer commits first and delta-rs reports a
conflict (same partition, or any MERGE), the write is redone on the new snapshot; writes to
different partitions of a table do not conflict.
"""

from __future__ import annotations

import logging
import random
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from jobs.config import FactoryConfig
from jobs.errors import ConcurrentWriteError, FactoryError, UnsafePath
from jobs.lakehouse.tables import TableSpec

log = logging.getLogger(__name__)

COMMIT_ATTEMPTS = 6  # a write lost to concurrent writers this often gives up with ConcurrentWriteError
_TABLE_NAME = re.compile(r"[a-z][a-z0-9_]*")
_PARTITION_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]*")  # ds, source names: nothing that leaves a folder or a quote

T = TypeVar("T")
WritePayload = Callable[[TableSpec, pa.Table], tuple[pa.Table | pa.RecordBatchReader, dict]]


def plain_payload(spec: TableSpec, data: pa.Table) -> tuple[pa.Table, dict]:
    """What delta-rs gets for a write of `data` to `spec`: the table itself and no extra write options."""
    return data, {}


# The hook every write goes through on its way to delta-rs: (spec, data) -> (data or a reader, extra
# write options). Production never changes it. Only the fault harness replaces it
# (jobs.faults.inject.pause_before_commit), with a reader that pauses before its last batch, so a
# scenario can kill -9 the process between a write's data files and its commit.
write_payload: WritePayload = plain_payload


def table_uri(cfg: FactoryConfig, spec: TableSpec) -> str:
    """The table's location: always one plain folder name directly under the lake root."""
    if not _TABLE_NAME.fullmatch(spec.name):
        raise UnsafePath(f"Table name {spec.name!r} is not a plain lower-case name; tables live directly under the lake root.")
    return spec.uri(cfg.lake_uri)


def probe_write(folder: Path) -> None:
    """Create folder if needed and write (then remove) a file in it; OSError if that is not possible."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
        pass


def check_writable(cfg: FactoryConfig) -> None:
    """One clear sentence if a local lake root cannot be written (object stores answer at their first write)."""
    uri = cfg.lake_uri
    if "://" in uri and not uri.startswith("file://"):
        return
    try:
        probe_write(Path(uri.removeprefix("file://")))
    except OSError as err:
        raise FactoryError(f"The lake at {uri} is not writable ({err.strerror or err}); fix its permissions or point "
                           f"paths.lake_uri (FACTORY__PATHS__LAKE_URI) at a writable location.") from None


def open_table(cfg: FactoryConfig, spec: TableSpec, version: int | None = None) -> DeltaTable | None:
    """The Delta table (at `version`, default latest), or None if it was never written."""
    try:
        return DeltaTable(table_uri(cfg, spec), version=version, storage_options=cfg.lake.storage_options or None)
    except TableNotFoundError:
        return None


def current_version(cfg: FactoryConfig, spec: TableSpec) -> int | None:
    table = open_table(cfg, spec)
    return None if table is None else table.version()


def read(cfg: FactoryConfig, spec: TableSpec, where: dict[str, object] | None = None,
         columns: list[str] | None = None, version: int | None = None) -> pa.Table:
    """Rows of the table (equality filters in `where`), or an empty table of the right schema."""
    table = open_table(cfg, spec, version)
    schema = spec.schema if columns is None else pa.schema([spec.schema.field(c) for c in columns])
    if table is None:
        return schema.empty_table()
    where = where or {}
    # Partition filters prune files; other columns are filtered after the cast to the table's schema
    # (files written by a MERGE may hold string_view columns that a pushed-down filter cannot compare).
    filters = [(k, "=", v) for k, v in where.items() if k in spec.partition_by] or None
    rest = {k: v for k, v in where.items() if k not in spec.partition_by}
    names = None if columns is None else list(dict.fromkeys([*columns, *rest]))
    data = table.to_pyarrow_table(columns=names, filters=filters)
    data = data.cast(pa.schema([spec.schema.field(c) for c in data.column_names]))
    for column, value in rest.items():
        data = data.filter(pc.equal(data.column(column), pa.scalar(value, spec.schema.field(column).type)))
    return data.select(schema.names)


def snapshot_files(cfg: FactoryConfig, spec: TableSpec, where_in: dict[str, list[str]] | None = None,
                   version: int | None = None) -> tuple[int | None, list[str]]:
    """(version, Parquet file URIs) of one table version, pruned by partition values.

    Spark reads them with `read.option("basePath", table_uri).parquet(*files)` and Ray Data with
    `read_parquet(files)`; the version pins exactly what was read for the MLflow run.
    """
    table = open_table(cfg, spec, version)
    if table is None:
        return None, []
    filters = [(k, "in", list(v)) for k, v in (where_in or {}).items()] or None
    files = table.file_uris(file_pruning_predicate=filters) if filters else table.file_uris()
    return table.version(), files


def _conform(spec: TableSpec, data: pa.Table) -> pa.Table:
    missing = set(spec.schema.names) - set(data.column_names)
    if missing:
        raise ValueError(f"{spec.name}: the data to write lacks columns {sorted(missing)}")
    return data.select(spec.schema.names).cast(spec.schema)


def partition_predicate(spec: TableSpec, where: dict[str, str]) -> str:
    """SQL for `column = 'value' AND ...`; values are partition values, checked so none can leave
    its partition folder or break out of the string literal."""
    for column, value in where.items():
        if column not in spec.schema.names:
            raise UnsafePath(f"{spec.name} has no column {column!r} to select a partition by.")
        if not isinstance(value, str) or not _PARTITION_VALUE.fullmatch(value) or ".." in value:
            raise UnsafePath(f"{spec.name}: partition value {value!r} for {column} may only hold letters, digits and _.:+-.")
    return " AND ".join(f"{column} = '{value}'" for column, value in where.items())


def with_commit_retries(spec: TableSpec, what: str, write: Callable[[], T]) -> T:
    """Run a whole write (open the latest snapshot, write files, commit) until it commits.

    delta-rs raises CommitFailedError when a concurrent writer committed first and the two
    conflict; redoing the write against the new snapshot is correct for every write in this module
    (a partition replace and a MERGE do not depend on what the loser had read of the table)."""
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return write()
        except (CommitFailedError, DeltaError) as err:
            # A creation race shows up as "A table already exists": the other writer created it first.
            if not isinstance(err, CommitFailedError) and "already exists" not in str(err):
                raise
            if attempt == COMMIT_ATTEMPTS:
                raise ConcurrentWriteError(
                    f"{spec.name}: {what} lost {attempt} commits in a row to concurrent writers ({err}); "
                    f"rerun the step when the other run is done."
                ) from err
            delay = random.uniform(0.05, 0.2) * 2 ** (attempt - 1)
            log.warning("%s: %s conflicted with a concurrent commit (%s); retrying in %.2fs", spec.name, what, err, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _create_table(cfg: FactoryConfig, spec: TableSpec, payload, options: dict) -> int:
    """The first write of a table creates it with `payload`; a concurrent creator makes this fail
    ("already exists") and with_commit_retries redo the write against the new table."""
    write_deltalake(table_uri(cfg, spec), payload, mode="error", partition_by=list(spec.partition_by) or None,
                    storage_options=cfg.lake.storage_options or None, **options)
    return current_version(cfg, spec)


def replace_partition(cfg: FactoryConfig, spec: TableSpec, data: pa.Table, where: dict[str, str]) -> int:
    """Atomically replace exactly the rows matching `where` (partition columns) with `data`.

    A rerun of the same day writes the same rows again: content is unchanged, never appended twice.
    Returns the new table version.
    """
    predicate = partition_predicate(spec, where)
    bad = [row for row in data.select(list(where)).to_pylist() if row != where] if data.num_rows else []
    if bad:
        raise ValueError(f"{spec.name}: rows outside the replaced partition {where}: {bad[:1]}")
    data = _conform(spec, data)

    def write() -> int:
        table = open_table(cfg, spec)
        payload, options = write_payload(spec, data)
        if table is not None and _lacks_columns(table, spec):  # a column added to the TableSpec since
            options = {**options, "schema_mode": "merge"}  # older rows read it as null
        write_deltalake(
            table if table is not None else table_uri(cfg, spec), payload, mode="overwrite", predicate=predicate,
            partition_by=list(spec.partition_by) or None, storage_options=cfg.lake.storage_options or None, **options,
        )
        return table.version() if table is not None else current_version(cfg, spec)

    return with_commit_retries(spec, f"replacing partition {where}", write)


def _lacks_columns(table: DeltaTable, spec: TableSpec) -> bool:
    """True when the stored table has fewer columns than its TableSpec (the spec gained one)."""
    stored = {field.name for field in table.schema().fields}
    return bool(set(spec.schema.names) - stored)


def append(cfg: FactoryConfig, spec: TableSpec, data: pa.Table) -> int | None:
    """Add rows whose key is new to an append-only table (item_vocab); existing rows never change.

    One MERGE inserts a row only if neither its key nor a value of a column that must stay unique
    (TableSpec.unique: item_vocab.item_idx) is taken, so two runs racing cannot give one id to two items or two ids to
    one item. If afterwards a row of `data` is not in the table exactly as given, another run got
    there first with different rows: ConcurrentWriteError, and the step recomputes from a fresh
    snapshot (jobs.pipeline.run_step retries it). No commit when there is nothing to add.
    """
    data = _conform(spec, data)
    if data.num_rows == 0 and open_table(cfg, spec) is not None:
        return current_version(cfg, spec)
    unique = (*spec.key, *spec.unique)

    def write() -> int:
        table = open_table(cfg, spec)
        payload, options = write_payload(spec, data)
        if table is None:
            return _create_table(cfg, spec, payload, options)
        if data.num_rows:
            table.merge(payload, predicate=" OR ".join(f"t.{c} = s.{c}" for c in unique),
                        source_alias="s", target_alias="t").when_not_matched_insert_all().execute()
        return table.version()

    version = with_commit_retries(spec, "appending new keys", write)
    stored = {tuple(row[c] for c in unique) for row in read(cfg, spec, columns=list(unique), version=version).to_pylist()}
    missing = [row for row in data.select(list(unique)).to_pylist() if tuple(row.values()) not in stored]
    if missing:
        raise ConcurrentWriteError(
            f"{spec.name}: another run added conflicting rows while this step computed {data.num_rows} new ones "
            f"(e.g. {missing[0]}); rerun the step to recompute them from the current table."
        )
    return version


def upsert(cfg: FactoryConfig, spec: TableSpec, data: pa.Table, update_when: str | None = None,
           preserve: tuple[str, ...] = (), set_expressions: dict[str, str] | None = None,
           also_when: tuple[tuple[str, dict[str, str]], ...] = ()) -> tuple[int, dict]:
    """MERGE `data` into the table on its key: insert new keys; where `update_when` (SQL over the
    aliases s and t) holds, update matched rows except the `preserve` columns (a column in
    `set_expressions` gets that SQL expression instead of s.column). Each (predicate, {column: SQL})
    of `also_when` is a further update clause for matched rows the first one did not take.
    Creates the table on first use. Returns (version, merge metrics)."""
    data = _conform(spec, data)
    updates = {c: f"s.{c}" for c in spec.schema.names if c not in preserve and c not in spec.key}
    updates.update(set_expressions or {})
    on = " AND ".join(f"t.{k} = s.{k}" for k in spec.key)

    def write() -> tuple[int, dict]:
        table = open_table(cfg, spec)
        payload, options = write_payload(spec, data)
        if table is None:
            return _create_table(cfg, spec, payload, options), {"num_target_rows_inserted": data.num_rows}
        merge = table.merge(payload, predicate=on, source_alias="s", target_alias="t").when_matched_update(
            updates, predicate=update_when)
        for predicate, expressions in also_when:
            merge = merge.when_matched_update(expressions, predicate=predicate)
        metrics = merge.when_not_matched_insert_all().execute()
        return table.version(), metrics

    return with_commit_retries(spec, "merging", write)


def history(cfg: FactoryConfig, spec: TableSpec, limit: int | None = None) -> list[dict]:
    table = open_table(cfg, spec)
    return [] if table is None else table.history(limit)
