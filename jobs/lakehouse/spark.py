"""One SparkSession per process, configured from [spark], and snapshot reads of Delta tables.

Spark's fixed costs (JVM start, ~10 s) are paid once per process: every step in the process shares
the session. Tables are read as the Parquet files of one Delta version (see jobs.lakehouse.delta.snapshot_files);
large tables are written by the executors and committed by the driver (jobs.lakehouse.commit).
"""

from __future__ import annotations

import functools
import logging
import os
import sys

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from jobs.config import FactoryConfig
from jobs.lakehouse import commit, delta
from jobs.lakehouse.tables import TableSpec

log = logging.getLogger(__name__)


@functools.cache
def _session(master: str, driver_memory: str, shuffle_partitions: int, extra: tuple) -> SparkSession:
    # Executors must run the same interpreter as the driver (the project's virtualenv): a default set
    # (not read) here, where the process starts Spark.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName("embedding-factory")
        .master(master)
        .config("spark.driver.memory", driver_memory)
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        # ds folders must stay strings ("2026-01-01"), not be inferred as dates.
        .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # Executors write Delta data files: timestamps as Parquet TIMESTAMP_MICROS (Delta's type), not INT96.
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.ui.enabled", "false")
    )
    for key, value in extra:
        builder = builder.config(key, value)
    log.info("starting Spark (master=%s)", master)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def spark_session(cfg: FactoryConfig) -> SparkSession:
    s = cfg.spark
    return _session(s.master, s.driver_memory, s.shuffle_partitions, tuple(sorted(s.extra_conf.items())))


def read_snapshot(cfg: FactoryConfig, spec: TableSpec, where_in: dict[str, list[str]] | None = None,
                  version: int | None = None) -> tuple[int | None, DataFrame]:
    """(version, DataFrame) of one version of a Delta table; an empty frame if it has no files."""
    spark = spark_session(cfg)
    version, files = delta.snapshot_files(cfg, spec, where_in, version)
    if not files:
        return version, spark.createDataFrame(spec.schema.empty_table())
    frame = spark.read.option("basePath", delta.table_uri(cfg, spec)).parquet(*files)
    return version, frame.select(*spec.schema.names)


def write_files(cfg: FactoryConfig, frame: DataFrame, spec: TableSpec, partition: dict[str, str]) -> commit.WriterFolder:
    """The executors write `frame`'s rows of `partition` as Parquet files into a fresh writer folder of
    the table (partition columns not fixed by `partition` as hive folders); nothing is committed yet."""
    folder = commit.writer_folder(cfg, spec, partition)
    rest = [c for c in spec.partition_by if c not in partition]
    writer = frame.select(*folder.columns, *rest).write.mode("errorifexists")
    uri = folder.uri.replace("s3://", "s3a://", 1) if folder.uri.startswith("s3://") else folder.uri  # Spark's S3 client
    (writer.partitionBy(*rest) if rest else writer).parquet(uri)
    return folder


def write_partition(cfg: FactoryConfig, frame: DataFrame, spec: TableSpec, partition: dict[str, str]) -> int:
    """Replace `partition` of the table with `frame` (whose rows all belong to it): executors write the
    files, the driver commits their metadata in one transaction. Returns the new table version."""
    return commit.commit_replace(cfg, write_files(cfg, frame, spec, partition))


def to_arrow(frame: DataFrame, spec: TableSpec) -> pa.Table:
    """Spark output as Arrow in the table's schema, ready for a delta-rs commit."""
    return frame.select(*spec.schema.names).toArrow().cast(spec.schema)
