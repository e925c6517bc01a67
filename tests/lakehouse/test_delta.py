import pyarrow as pa
import pytest

from jobs.lakehouse import delta
from jobs.lakehouse.tables import EVAL_METRICS, ITEM_VOCAB


def metrics(ds: str, value: float) -> pa.Table:
    return pa.Table.from_pylist([{"ds": ds, "embeddings_ds": ds, "model_version": "1", "method": "m",
                                  "metric": "x", "value": value}], schema=EVAL_METRICS.schema)


def test_rerun_of_same_ds_replaces_partition_instead_of_appending(lake_cfg):
    delta.replace_partition(lake_cfg, EVAL_METRICS, metrics("2026-01-01", 1.0), {"ds": "2026-01-01"})
    delta.replace_partition(lake_cfg, EVAL_METRICS, metrics("2026-01-02", 2.0), {"ds": "2026-01-02"})
    delta.replace_partition(lake_cfg, EVAL_METRICS, metrics("2026-01-01", 3.0), {"ds": "2026-01-01"})
    rows = sorted((r["ds"], r["value"]) for r in delta.read(lake_cfg, EVAL_METRICS).to_pylist())
    assert rows == [("2026-01-01", 3.0), ("2026-01-02", 2.0)]


def test_rows_outside_the_replaced_partition_are_refused(lake_cfg):
    with pytest.raises(ValueError, match="outside the replaced partition"):
        delta.replace_partition(lake_cfg, EVAL_METRICS, metrics("2026-01-02", 1.0), {"ds": "2026-01-01"})


def test_time_travel_reads_an_old_version(lake_cfg):
    v1 = delta.replace_partition(lake_cfg, EVAL_METRICS, metrics("2026-01-01", 1.0), {"ds": "2026-01-01"})
    delta.replace_partition(lake_cfg, EVAL_METRICS, metrics("2026-01-01", 9.0), {"ds": "2026-01-01"})
    assert delta.read(lake_cfg, EVAL_METRICS, version=v1).column("value").to_pylist() == [1.0]
    assert len(delta.history(lake_cfg, EVAL_METRICS)) == 2


def test_reading_a_table_never_written_gives_an_empty_table_of_its_schema(lake_cfg):
    empty = delta.read(lake_cfg, ITEM_VOCAB)
    assert empty.num_rows == 0 and empty.schema == ITEM_VOCAB.schema
    assert delta.snapshot_files(lake_cfg, ITEM_VOCAB) == (None, [])


def test_upsert_changes_nothing_when_nothing_changed(lake_cfg):
    rows = pa.Table.from_pylist([{"item_id": "a", "item_idx": 1, "first_seen_ds": "2026-01-01"}], schema=ITEM_VOCAB.schema)
    first, _ = delta.upsert(lake_cfg, ITEM_VOCAB, rows)
    second, merge = delta.upsert(lake_cfg, ITEM_VOCAB, rows, update_when="s.item_idx != t.item_idx")
    assert first == second and merge["num_target_rows_updated"] == 0
