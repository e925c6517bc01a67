"""Distributed writes: engines write a table's Parquet data files, the driver commits only their metadata.

delta-rs has no distributed writer, so the large tables (TableSpec.scale "per_user" / "per_event")
are written the standard way. The API, in the order a step uses it:

1. `folder = writer_folder(cfg, spec, {"ds": ds})` gives a fresh folder inside the table,
   `<table>/ds=<ds>/writer-<uuid>/`. Engines write Parquet files into `folder.uri` with the columns
   `folder.columns` (the table's schema without its partition columns, which live in folder names and
   in the log): Spark executors by `frame.select(*folder.columns).write.parquet(folder.uri)` (see
   jobs.lakehouse.spark.write_partition), Ray actors by `Dataset.write_parquet(folder.uri)` or files they
   write in `map_batches`. A partition column not fixed by the folder (quarantine's `source`) may be
   written as hive folders below it (`partitionBy("source")`: `<folder>/source=events/part-*.parquet`).
2. The driver commits ONE transaction for the table and partition from the files' footers
   (`pyarrow.parquet.read_metadata`: row counts and min/max, no data read):
   - `commit_replace(cfg, folder)`: replace exactly the folder's partition (Delta's replaceWhere:
     the partition's old files are removed, the new ones added, one version). Several folders of
     one partition may be committed together (`commit_replace(cfg, [f1, f2], where={"ds": ds})`).
   - `commit_append(cfg, folder, read_version)`: insert-only keys. The engine did the anti-join
     against the version `read_version` it read; if another writer added files to the table since,
     the rows may collide: ConcurrentWriteError and the step recomputes from a fresh snapshot
     (jobs.pipeline.run_step retries it). Concurrent Delta appends never conflict by themselves.
   Both return the new table version and commit nothing visible before that: readers see the whole
   day or the previous one. A replace that loses a race to a concurrent writer of the same partition
   (CommitFailedError) is redone on the new snapshot with the same files (jobs.lakehouse.delta's
   commit retries); writers of different partitions do not conflict.
3. A writer killed before its commit leaves files no log entry references: invisible to every reader
   (all of them read the file list of a Delta version), and deleted by `vacuum(cfg, spec)` once older
   than the retention (`factory lake vacuum`). The same happens to the files a replace removed.

`before_commit(spec, actions)` runs just before every commit of this module; production never changes
it, the fault harness (jobs.faults.inject) replaces it to pause there so a scenario can kill -9 the
process between the data files and the commit.

Small dimension tables (TableSpec.scale == "small") keep the Arrow path of jobs.lakehouse.delta.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions

from jobs.config import FactoryConfig
from jobs.errors import ConcurrentWriteError
from jobs.lakehouse import delta
from jobs.lakehouse.tables import TableSpec

WRITER_PREFIX = "writer-"  # never "_" or ".": vacuum skips such folders, their orphans would stay forever
COMMIT_ID_KEY = "factoryCommit"  # commit-info key that identifies one commit of this module
VACUUM_RETENTION_HOURS = 168  # Delta's default; an orphan younger than this may still be a live writer's


@dataclass(frozen=True)
class WriterFolder:
    """One writer's fresh folder inside a table, for the files of one partition."""
    spec: TableSpec
    partition: dict[str, str]  # partition values fixed by the folder (e.g. {"ds": ds})
    relative: str  # path under the table root, e.g. "ds=2026-01-01/writer-<uuid>"
    table_uri: str

    @property
    def uri(self) -> str:
        """Where engines write the Parquet files."""
        return f"{self.table_uri.rstrip('/')}/{self.relative}"

    @property
    def columns(self) -> list[str]:
        """The columns the data files hold: the table's, less the partition columns."""
        return [c for c in self.spec.schema.names if c not in self.spec.partition_by]


def _no_hook(spec: TableSpec, actions: list[AddAction]) -> None:
    return None


# Runs before every commit of this module. Only the fault harness replaces it (jobs.faults.inject).
before_commit: Callable[[TableSpec, list[AddAction]], None] = _no_hook


def writer_folder(cfg: FactoryConfig, spec: TableSpec, partition: dict[str, str]) -> WriterFolder:
    """A fresh, uniquely named folder inside `spec`'s table for one writer's files of `partition`."""
    delta.partition_predicate(spec, partition)  # partition columns and values that cannot leave their folder
    unknown = set(partition) - set(spec.partition_by)
    if unknown:
        raise ValueError(f"{spec.name} is not partitioned by {sorted(unknown)}")
    ordered = [f"{c}={partition[c]}" for c in spec.partition_by if c in partition]
    relative = "/".join([*ordered, f"{WRITER_PREFIX}{uuid.uuid4().hex}"])
    return WriterFolder(spec, dict(partition), relative, delta.table_uri(cfg, spec))


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri if "://" in uri else f"file://{uri}")


def _stats(metadata: pq.FileMetaData, schema: pa.Schema) -> str:
    """Delta file statistics from a Parquet footer: numRecords, and per top-level column nullCount plus
    min/max for integer and string columns (exact in the footer; timestamps and floats are left out
    rather than risk a wrong bound: a reader then scans the file instead of skipping it)."""
    stats: dict = {"numRecords": metadata.num_rows, "minValues": {}, "maxValues": {}, "nullCount": {}}
    for index in range(metadata.num_columns):
        column = metadata.row_group(0).column(index) if metadata.num_row_groups else None
        name = column.path_in_schema if column is not None else None
        if name is None or "." in name or name not in schema.names:
            continue
        chunks = [metadata.row_group(g).column(index).statistics for g in range(metadata.num_row_groups)]
        if any(s is None or not s.has_null_count for s in chunks):
            continue
        stats["nullCount"][name] = sum(s.null_count for s in chunks)
        kind = schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_string(kind)):
            continue
        with_values = [s for s in chunks if s.has_min_max]
        if len(with_values) == sum(1 for s in chunks if s.null_count < s.num_values) and with_values:
            stats["minValues"][name] = min(s.min for s in with_values)
            stats["maxValues"][name] = max(s.max for s in with_values)
    return json.dumps(stats)


def file_actions(folder: WriterFolder) -> list[AddAction]:
    """AddActions for every Parquet file under the folder, from their footers; deletes the engines'
    other files (_SUCCESS, .crc, a failed task's _temporary/ leftovers) so that nothing vacuum skips
    stays behind."""
    fs, base = _filesystem(folder.uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except FileNotFoundError:
        return []  # an engine with no rows may not create the folder at all
    expected = pa.schema([folder.spec.schema.field(c) for c in folder.columns])
    actions = []
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pafs.FileType.File:
            continue
        below = info.path[len(base):].strip("/")
        hidden = any(part.startswith(("_", ".")) for part in below.split("/"))  # _SUCCESS, .crc, _temporary/...
        if hidden or not info.base_name.endswith(".parquet"):
            fs.delete_file(info.path)
            continue
        partition = dict(folder.partition)
        for segment in below.split("/")[:-1]:
            column, sep, value = segment.partition("=")
            if not sep or column not in folder.spec.partition_by:
                raise ValueError(f"{folder.spec.name}: {below} lies in {segment!r}, not a partition folder of the table")
            partition[column] = unquote(value)
        missing = set(folder.spec.partition_by) - set(partition)
        if missing:
            raise ValueError(f"{folder.spec.name}: {below} has no value for partition columns {sorted(missing)}")
        delta.partition_predicate(folder.spec, partition)
        metadata = pq.read_metadata(info.path, filesystem=fs)
        _check_file_schema(folder.spec, below, metadata.schema.to_arrow_schema(), expected)
        actions.append(AddAction(
            path=f"{folder.relative}/{below}", size=info.size, partition_values=partition,
            modification_time=info.mtime_ns // 1_000_000, data_change=True, stats=_stats(metadata, expected),
        ))
    return actions


def _check_file_schema(spec: TableSpec, path: str, found: pa.Schema, expected: pa.Schema) -> None:
    """The file must hold exactly the table's data columns in the table's types (Spark's INT96
    timestamps would come back as nanoseconds: jobs.lakehouse.spark writes TIMESTAMP_MICROS)."""
    if found.names != expected.names:
        raise ValueError(f"{spec.name}: {path} holds columns {found.names}, the table's data columns are {expected.names}")
    for field in found:
        want = expected.field(field.name).type
        if _plain(field.type) != _plain(want):
            raise ValueError(f"{spec.name}: {path} stores {field.name} as {field.type}, the table as {want} "
                             f"(timestamps in microseconds, UTC)")


def _plain(kind: pa.DataType) -> pa.DataType:
    """The type without list element names (Spark calls them "element", Arrow "item")."""
    return pa.list_(_plain(kind.value_type)) if pa.types.is_list(kind) else kind


def _folders(folders: WriterFolder | Sequence[WriterFolder]) -> list[WriterFolder]:
    folders = [folders] if isinstance(folders, WriterFolder) else list(folders)
    if not folders or len({f.spec.name for f in folders}) != 1:
        raise ValueError("commit one table at a time, from at least one writer folder")
    return folders


def _commit(cfg: FactoryConfig, spec: TableSpec, table: DeltaTable | None, actions: list[AddAction],
            mode: str, where: dict[str, str] | None) -> int:
    """One commit of `actions`; returns the version it became (found by an id in its commit info:
    delta-rs may land a commit after non-conflicting concurrent ones, and does not say where)."""
    before_commit(spec, actions)
    commit_id = uuid.uuid4().hex
    properties = CommitProperties(custom_metadata={COMMIT_ID_KEY: commit_id})
    if table is None:  # the first commit creates the table; a concurrent creator makes it fail ("already exists")
        create_table_with_add_actions(delta.table_uri(cfg, spec), DeltaSchema.from_arrow(spec.schema), actions,
                                      mode="error", partition_by=list(spec.partition_by) or None,
                                      storage_options=cfg.lake.storage_options or None, commit_properties=properties)
    else:
        filters = [(c, "=", v) for c, v in where.items()] if where else None
        table.create_write_transaction(actions, mode=mode, schema=table.schema(), partition_by=list(spec.partition_by) or None,
                                       partition_filters=filters, commit_properties=properties)
    latest = delta.open_table(cfg, spec)
    return next((entry["version"] for entry in latest.history(50) if entry.get(COMMIT_ID_KEY) == commit_id), latest.version())


def commit_replace(cfg: FactoryConfig, folders: WriterFolder | Sequence[WriterFolder],
                   where: dict[str, str] | None = None) -> int:
    """Replace the partition `where` (default: the folder's partition) with the folders' files in one
    commit; a partition left with no files is emptied. Returns the new table version."""
    folders = _folders(folders)
    spec = folders[0].spec
    where = dict(folders[0].partition if where is None else where)
    delta.partition_predicate(spec, where)
    actions = [a for f in folders for a in file_actions(f)]
    outside = [a.path for a in actions if any(a.partition_values.get(c) != v for c, v in where.items())]
    if outside:
        raise ValueError(f"{spec.name}: files outside the replaced partition {where}: {outside[:1]}")
    if not set(where) <= set(spec.partition_by):
        raise ValueError(f"{spec.name}: a replace selects partitions by partition columns, not {sorted(where)}")

    def write() -> int:
        table = delta.open_table(cfg, spec)
        if table is not None and actions and not _partition_files(table, where):
            table = _claim(cfg, spec, table, actions[0].partition_values)
        return _commit(cfg, spec, table, actions, "overwrite", where)

    return delta.with_commit_retries(spec, f"replacing partition {where}", write)


def _partition_files(table: DeltaTable, where: dict[str, str]) -> list[str]:
    return table.file_uris(file_pruning_predicate=[(c, "=", v) for c, v in where.items()])


def _claim(cfg: FactoryConfig, spec: TableSpec, table: DeltaTable, partition: dict[str, str]) -> DeltaTable:
    """Append one zero-row file to an empty partition and return the snapshot after it.

    delta-rs (1.6) sees no conflict between two overwrites of a partition that holds no files: each
    removes nothing, so both commit and the partition holds both writers' rows (the fault suite found
    it: one day ingested twice at once). With a claim in it, every overwrite removes at least one
    file, so of two concurrent writers the second to commit fails ("a concurrent transaction deleted
    data this operation read") and with_commit_retries redoes it on the new snapshot. Readers never
    see the claim: it has no rows, and the overwrite removes it."""
    folder = writer_folder(cfg, spec, partition)
    fs, path = _filesystem(folder.uri)
    fs.create_dir(path, recursive=True)
    data_schema = pa.schema([spec.schema.field(c) for c in folder.columns])
    pq.write_table(data_schema.empty_table(), f"{path}/claim.parquet", filesystem=fs)
    _commit(cfg, spec, table, file_actions(folder), "append", None)
    return delta.open_table(cfg, spec)


def commit_append(cfg: FactoryConfig, folders: WriterFolder | Sequence[WriterFolder], read_version: int | None) -> int | None:
    """Add the folders' files (rows whose keys the engine found absent at `read_version`) in one commit.

    ConcurrentWriteError if the table changed since `read_version` (another writer may have added the
    same keys); no commit when there are no files. Returns the table version."""
    folders = _folders(folders)
    spec = folders[0].spec
    actions = [a for f in folders for a in file_actions(f)]
    if not actions:
        return delta.current_version(cfg, spec)
    table = delta.open_table(cfg, spec)
    latest = None if table is None else table.version()
    if latest != read_version:
        raise ConcurrentWriteError(
            f"{spec.name}: the table moved from version {read_version} to {latest} while this step computed its "
            f"new keys; rerun the step to recompute them from the current table.")
    try:
        return _commit(cfg, spec, table, actions, "append", None)
    except Exception as err:  # a racing creator or appender: the keys were computed against a stale table
        if "already exists" in str(err) or type(err).__name__ == "CommitFailedError":
            raise ConcurrentWriteError(f"{spec.name}: a concurrent writer committed first ({err}); rerun the step.") from err
        raise


def committed_rows(cfg: FactoryConfig, spec: TableSpec, where: dict[str, str], version: int | None = None) -> int:
    """Rows of the partition `where` in a table version (default latest), summed from the log's file
    statistics (numRecords): no data file is read, only a footer where a file has no statistics."""
    table = delta.open_table(cfg, spec, version)
    if table is None:
        return 0
    files = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    rows = 0
    for entry in files:
        if any(entry.get(f"partition.{column}") != value for column, value in where.items()):
            continue
        if entry.get("num_records") is None:
            fs, base = _filesystem(delta.table_uri(cfg, spec))
            rows += pq.read_metadata(f"{base}/{unquote(entry['path'])}", filesystem=fs).num_rows
        else:
            rows += entry["num_records"]
    return rows


def vacuum(cfg: FactoryConfig, spec: TableSpec, retention_hours: int = VACUUM_RETENTION_HOURS,
           dry_run: bool = False) -> list[str]:
    """Delete the table's files no current version references (replaced partitions, killed writers'
    orphans) once older than `retention_hours`; returns their paths. Files younger than that are kept:
    they may belong to a writer still running, or to a version a reader time-travels to."""
    table = delta.open_table(cfg, spec)
    if table is None:
        return []
    return table.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False, full=True)
