"""Reading and writing the lake's Delta tables through delta-rs (`deltalake`).

Why delta-rs and not Spark's Delta writer: Delta's Spark jars come only from Maven, which this
project cannot assume; delta-rs is a PyPI wheel and writes standard Delta tables that Spark, Trino,
DuckDB or delta-spark open unchanged. Spark and Ray read a consistent snapshot through
`snapshot_files` (the Parquet files of one table version) and hand their output back as Arrow.

`lake.engine = "delta-spark"` sends the same writes through Spark's Delta writer instead
(jobs.lake_delta_spark), for clusters where Delta's jars are installed. Reads always use delta-rs.

Every write is idempotent for its key: `replace_partition` is Delta's replaceWhere (a predicate
overwrite in one atomic commit), `upsert` is a MERGE that changes nothing when nothing changed.
"""

from __future__ import annotations

import logging

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from jobs import lake_delta_spark
from jobs.config import FactoryConfig
from jobs.tables import TableSpec

log = logging.getLogger(__name__)


def table_uri(cfg: FactoryConfig, spec: TableSpec) -> str:
    return spec.uri(cfg.lake_uri)


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
    filters = [(k, "=", v) for k, v in (where or {}).items()] or None
    return table.to_pyarrow_table(columns=columns, filters=filters).cast(schema)


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


def _predicate(where: dict[str, str]) -> str:
    return " AND ".join(f"{column} = '{value}'" for column, value in where.items())


def replace_partition(cfg: FactoryConfig, spec: TableSpec, data: pa.Table, where: dict[str, str]) -> int:
    """Atomically replace exactly the rows matching `where` (partition columns) with `data`.

    A rerun of the same day writes the same rows again: content is unchanged, never appended twice.
    Returns the new table version.
    """
    bad = [row for row in data.select(list(where)).to_pylist() if row != where] if data.num_rows else []
    if bad:
        raise ValueError(f"{spec.name}: rows outside the replaced partition {where}: {bad[:1]}")
    if cfg.lake.engine == "delta-spark":
        lake_delta_spark.replace_partition(cfg, spec, _conform(spec, data), table_uri(cfg, spec), _predicate(where))
        return current_version(cfg, spec)
    write_deltalake(
        table_uri(cfg, spec), _conform(spec, data), mode="overwrite", predicate=_predicate(where),
        partition_by=list(spec.partition_by) or None, storage_options=cfg.lake.storage_options or None,
    )
    return current_version(cfg, spec)


def append(cfg: FactoryConfig, spec: TableSpec, data: pa.Table) -> int | None:
    """Append rows (used only by append-only tables such as item_vocab); no commit if empty."""
    if data.num_rows == 0 and open_table(cfg, spec) is not None:
        return current_version(cfg, spec)
    if cfg.lake.engine == "delta-spark":
        lake_delta_spark.append(cfg, spec, _conform(spec, data), table_uri(cfg, spec))
        return current_version(cfg, spec)
    write_deltalake(
        table_uri(cfg, spec), _conform(spec, data), mode="append",
        partition_by=list(spec.partition_by) or None, storage_options=cfg.lake.storage_options or None,
    )
    return current_version(cfg, spec)


def upsert(cfg: FactoryConfig, spec: TableSpec, data: pa.Table, update_when: str | None = None,
           preserve: tuple[str, ...] = ()) -> tuple[int, dict]:
    """MERGE `data` into the table on its key: insert new keys; where `update_when` (SQL over the
    aliases s and t) holds, update matched rows except the `preserve` columns. Creates the table on
    first use. Returns (version, merge metrics)."""
    data = _conform(spec, data)
    if cfg.lake.engine == "delta-spark":
        lake_delta_spark.upsert(cfg, spec, data, table_uri(cfg, spec), update_when, preserve)
        return current_version(cfg, spec), {}
    table = open_table(cfg, spec)
    if table is None:
        write_deltalake(table_uri(cfg, spec), data, partition_by=list(spec.partition_by) or None,
                        storage_options=cfg.lake.storage_options or None)
        return current_version(cfg, spec), {"num_target_rows_inserted": data.num_rows}
    on = " AND ".join(f"t.{k} = s.{k}" for k in spec.key)
    metrics = (
        table.merge(data, predicate=on, source_alias="s", target_alias="t")
        .when_matched_update(
            {c: f"s.{c}" for c in spec.schema.names if c not in preserve and c not in spec.key},
            predicate=update_when,
        )
        .when_not_matched_insert_all()
        .execute()
    )
    return current_version(cfg, spec), metrics


def history(cfg: FactoryConfig, spec: TableSpec, limit: int | None = None) -> list[dict]:
    table = open_table(cfg, spec)
    return [] if table is None else table.history(limit)
