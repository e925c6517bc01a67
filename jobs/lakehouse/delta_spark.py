"""The delta-spark write engine (`lake.engine = "delta-spark"`), for clusters with Delta's jars.

Same tables, same semantics as the delta-rs writes in jobs.lakehouse.delta: replaceWhere for a partition,
append, MERGE on the table key. Spark's executors then write the Parquet files themselves instead
of handing Arrow to the driver. Needs io.delta:delta-spark_2.13 on the Spark classpath (Maven only:
not installable on the development machines, so this path is not exercised by the test suite
beyond its clear error when the jars are missing).
"""

from __future__ import annotations

import pyarrow as pa

from jobs.config import FactoryConfig
from jobs.errors import FactoryError
from jobs.lakehouse.tables import TableSpec

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def _frame(cfg: FactoryConfig, spec: TableSpec, data: pa.Table):
    from jobs.lakehouse.spark import spark_session

    spark = spark_session(cfg)
    try:
        spark._jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")
    except Exception:
        raise FactoryError(
            "lake.engine = 'delta-spark' needs Delta's jars (io.delta:delta-spark_2.13) on Spark's classpath "
            f"and spark.extra_conf {DELTA_CONF}; install them on the cluster or use lake.engine = 'delta-rs'."
        ) from None
    return spark.createDataFrame(data)


def replace_partition(cfg: FactoryConfig, spec: TableSpec, data: pa.Table, uri: str, predicate: str) -> None:
    (_frame(cfg, spec, data).write.format("delta").mode("overwrite").option("replaceWhere", predicate)
     .partitionBy(*spec.partition_by).save(uri))


def append(cfg: FactoryConfig, spec: TableSpec, data: pa.Table, uri: str) -> None:
    _frame(cfg, spec, data).write.format("delta").mode("append").partitionBy(*spec.partition_by).save(uri)


def upsert(cfg: FactoryConfig, spec: TableSpec, data: pa.Table, uri: str, update_when: str | None,
           preserve: tuple[str, ...]) -> None:
    from delta.tables import DeltaTable

    frame = _frame(cfg, spec, data)
    spark = frame.sparkSession
    if not DeltaTable.isDeltaTable(spark, uri):
        frame.write.format("delta").partitionBy(*spec.partition_by).save(uri)
        return
    updates = {c: f"s.{c}" for c in spec.schema.names if c not in preserve and c not in spec.key}
    (DeltaTable.forPath(spark, uri).alias("t")
     .merge(frame.alias("s"), " AND ".join(f"t.{k} = s.{k}" for k in spec.key))
     .whenMatchedUpdate(condition=update_when, set=updates)
     .whenNotMatchedInsertAll()
     .execute())
