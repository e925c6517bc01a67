"""Step embed: bucketed inference matches full padding, and incremental days carry the right users."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
import torch

from jobs.config import load_config
from jobs.days import shift
from jobs.lakehouse import delta
from jobs.lakehouse.tables import USER_EMBEDDINGS, USER_SEQUENCES
from jobs.steps import embed
from jobs.steps.embed import embed_day, unchanged_inputs
from jobs.steps.user_predictor import UserEmbeddingPredictor, chunk_end
from jobs.tracking import registry
from models.sequences import pad_left, pad_left_flat, time_gap_buckets
from models.user_encoder import UserEncoder, UserEncoderConfig

DS = "2026-01-05"
NUM_ITEMS = 40


def model(seed: int = 0, **cfg) -> UserEncoder:
    torch.manual_seed(seed)
    return UserEncoder(UserEncoderConfig(num_items=NUM_ITEMS, max_len=12, d_model=16, n_heads=2, **cfg)).eval()


def histories(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """n histories of lengths 0..20 (some longer than max_len 12), with ids up to NUM_ITEMS + 5
    (the last five are newer than the model's vocabulary)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 21, n)
    return ([rng.integers(1, NUM_ITEMS + 6, k).astype(np.int32) for k in lengths],
            [rng.integers(1, 4, k).astype(np.int8) for k in lengths])


def sequences_table(users: list[str], items, events, ts=None) -> pa.Table:
    """user_id, item_idx, event_type lists (and ts lists, ms since epoch, when given)."""
    table = pa.table({"user_id": pa.array(users, pa.string()),
                      "item_idx": pa.array([list(map(int, s)) for s in items], pa.list_(pa.int32())),
                      "event_type": pa.array([list(map(int, s)) for s in events], pa.list_(pa.int8()))})
    return table if ts is None else table.append_column("ts", pa.array([list(map(int, s)) for s in ts], pa.list_(pa.int64())))


def event_times(items, seed: int = 0, scale_ms: int = 60_000) -> list[np.ndarray]:
    """Increasing event times (ms) aligned with `items`, gaps up to ~`scale_ms` x 1000."""
    rng = np.random.default_rng(seed)
    return [1_700_000_000_000 + np.cumsum(rng.integers(0, 1000, len(s)) * scale_ms) for s in items]


def predictor(m: UserEncoder, tokens_per_forward: int = 7, version: str = "3") -> UserEmbeddingPredictor:
    return UserEmbeddingPredictor(m.state_dict(), dataclasses.asdict(m.cfg), version, threads=1,
                                  tokens_per_forward=tokens_per_forward)


def test_pad_left_flat_matches_a_per_row_loop():
    items, _ = histories(30)
    expected = np.zeros((30, 12), np.int64)
    for i, s in enumerate(items):
        tail = s[-12:]
        expected[i, 12 - len(tail):] = tail
    np.testing.assert_array_equal(pad_left(items, 12), expected)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in items])])
    np.testing.assert_array_equal(pad_left_flat(np.concatenate(items), offsets[:-1], offsets[1:], 12), expected)
    assert pad_left([np.zeros(0)], 3).tolist() == [[0, 0, 0]]


def test_last_position_path_equals_the_full_forward(one_torch_thread):
    m = model()
    ids = torch.randint(1, NUM_ITEMS + 1, (9, 12))
    ids[:4, :5] = 0  # left padding
    events = torch.randint(1, 4, (9, 12)) * (ids != 0)
    with torch.inference_mode():
        full = torch.nn.functional.normalize(m(ids, events)[:, -1], dim=-1)
        torch.testing.assert_close(m.user_embeddings(ids, events), full)


@pytest.mark.parametrize("tokens_per_forward", [1, 7, 100, 10_000])
def test_bucketed_vectors_equal_full_padding_whatever_the_batch(one_torch_thread, tokens_per_forward):
    m = model()
    items, events = histories(50)
    kept = [(s[s <= NUM_ITEMS], e[s <= NUM_ITEMS]) for s, e in zip(items, events)]  # the vocabulary filter
    with torch.inference_mode():
        expected = m.user_embeddings(torch.from_numpy(pad_left([k[0] for k in kept], 12)),
                                     torch.from_numpy(pad_left([k[1] for k in kept], 12))).numpy()
    got = predictor(m, tokens_per_forward).vectors(sequences_table([f"u{i}" for i in range(50)], items, events))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tokens_per_forward", [1, 7, 10_000])
def test_time_aware_bucketed_vectors_equal_full_padding_of_whole_row_gap_buckets(one_torch_thread, tokens_per_forward):
    m = model(n_time_buckets=24)
    items, events = histories(50)
    ts = event_times(items)
    # Gaps measured on the whole row (ms -> s), then the vocabulary filter drops new items and their gaps.
    gaps = [time_gap_buckets(t // 1000, 24) for t in ts]
    kept = [(s[s <= NUM_ITEMS], e[s <= NUM_ITEMS], g[s <= NUM_ITEMS]) for s, e, g in zip(items, events, gaps)]
    with torch.inference_mode():
        expected = m.user_embeddings(*(torch.from_numpy(pad_left([k[j] for k in kept], 12)) for j in range(3))).numpy()
    got = predictor(m, tokens_per_forward).vectors(sequences_table([f"u{i}" for i in range(50)], items, events, ts))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_predictor_vectors_follow_ts_only_for_a_time_aware_model(one_torch_thread):
    items, events = histories(20, seed=2)
    users = [f"u{i}" for i in range(20)]
    quick, slow = (sequences_table(users, items, events, event_times(items, scale_ms=scale)) for scale in (1_000, 3_600_000))
    timed = predictor(model(n_time_buckets=24))
    moved = ~np.isclose(timed.vectors(quick), timed.vectors(slow)).all(1)
    assert moved[[len(s[s <= NUM_ITEMS]) > 1 for s in items]].all()  # every history with a gap to tell apart
    plain = predictor(model())
    np.testing.assert_array_equal(plain.vectors(quick), plain.vectors(slow))
    np.testing.assert_array_equal(plain.vectors(quick), plain.vectors(quick.drop_columns(["ts"])))


def test_a_time_aware_model_refuses_a_batch_without_ts():
    items, events = histories(5)
    table = sequences_table([f"u{i}" for i in range(5)], items, events)
    with pytest.raises(ValueError, match="reads time gaps .* no 'ts' column"):
        predictor(model(n_time_buckets=24)).vectors(table)
    misaligned = table.append_column("ts", pa.array([[1] * (len(s) + 1) for s in items], pa.list_(pa.int64())))
    with pytest.raises(ValueError, match="same length"):
        predictor(model(n_time_buckets=24)).vectors(misaligned)


def test_the_predictor_reads_ts_only_for_a_model_with_time_gaps():
    assert embed.input_columns(model().cfg) == ["user_id", "item_idx", "event_type"]
    assert embed.input_columns(model(n_time_buckets=24).cfg) == ["user_id", "item_idx", "event_type", "ts"]


def test_predictor_output_keeps_row_order_ids_and_version(one_torch_thread):
    m = model()
    items, events = histories(20, seed=1)
    batch = sequences_table([f"u{i:02d}" for i in range(20)], items, events).slice(3, 10)  # a sliced batch
    out = predictor(m)(batch)
    assert out.schema == embed.OUTPUT_SCHEMA
    assert out.column("user_id").to_pylist() == [f"u{i:02d}" for i in range(3, 13)]
    assert set(out.column("model_version").to_pylist()) == {"3"}
    vectors = np.stack(out.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    alone = predictor(m)(batch.slice(4, 1))  # one row alone gives the same vector as inside the batch
    np.testing.assert_allclose(alone.column("embedding")[0].values.to_numpy(), vectors[4], rtol=1e-5, atol=1e-6)


def test_model_calls_fit_the_token_budget():
    widths = np.array([1, 1, 2, 3, 3, 5, 12, 12])
    ends, first = [], 0
    while first < len(widths):
        ends.append(first := chunk_end(widths, first, 6))
    assert ends == [3, 5, 6, 7, 8]  # [1, 1, 2] pads to 3x2, [3, 3] to 2x3; a row wider than the budget goes alone


def test_unchanged_inputs_compares_the_whole_model_input():
    before = sequences_table(["a", "b", "c", "d", "e"], [[1, 2], [3], [4, 5, 6], [7], [9, 9]],
                             [[1, 1], [1], [1, 2, 1], [1], [1, 1]])
    today = sequences_table(["e", "a", "b", "c", "d", "new"], [[9, 9], [1, 2], [3, 8], [5, 6], [7], [1]],
                            [[1, 1], [1, 1], [1, 1], [2, 1], [3], [1]])
    # e, a: same lists (row order differs); b: a new event; c: the oldest event left the window;
    # d: same item, other event type; new: no row yesterday.
    assert unchanged_inputs(today, before).tolist() == [True, True, False, False, False, False]


# --- incremental days through embed_day (Ray replaced by the plain predictor) -------------------------

@pytest.fixture
def inferred(monkeypatch, one_torch_thread) -> list[list[str]]:
    """The user ids of every embed_users call (which runs the plain predictor here, not Ray)."""
    calls: list[list[str]] = []

    def plain_embed_users(cfg, source, champion):
        columns = embed.input_columns(champion.model.cfg)
        table = source if isinstance(source, pa.Table) else pads.dataset(source).to_table(columns=columns)
        calls.append(table.column("user_id").to_pylist())
        return predictor(champion.model, version=champion.version)(table).sort_by("user_id")

    monkeypatch.setattr(embed, "embed_users", plain_embed_users)
    return calls


@pytest.fixture
def lake_cfg(lake_cfg, inferred):
    """The shared tmp-lake config (tests/conftest.py), with embed_users running in process."""
    return lake_cfg


def write_sequences(cfg, ds: str, table: pa.Table) -> tuple[int, list[str]]:
    rows = table.append_column("events_in_window", pa.array([1] * table.num_rows, pa.int64()))
    if "ts" not in rows.column_names:
        rows = rows.append_column("ts", pa.array([[0]] * table.num_rows, pa.list_(pa.int64())))
    rows = rows.append_column("last_ts", pa.nulls(table.num_rows, USER_SEQUENCES.schema.field("last_ts").type))
    rows = rows.append_column("ds", pa.array([ds] * table.num_rows, pa.string()))
    delta.replace_partition(cfg, USER_SEQUENCES, rows, {"ds": ds})
    return delta.snapshot_files(cfg, USER_SEQUENCES, where_in={"ds": [ds]})


def run_day(cfg, ds: str, table: pa.Table, champion: registry.RegisteredEncoder):
    version, files = write_sequences(cfg, ds, table)
    users, counts, plan = embed_day(cfg, ds, version, files, champion)
    delta.replace_partition(cfg, USER_EMBEDDINGS, users.append_column("ds", pa.array([ds] * users.num_rows)), {"ds": ds})
    return users, counts, plan


def two_days(n: int = 20, active: tuple[int, ...] = (2, 5), retimed: int | None = None) -> tuple[pa.Table, pa.Table]:
    """Two days of n users; the active ones have one more play the second day. With `retimed`, both days
    have ts lists, and that user's last event alone moves 10^6 s later on the second day (same items)."""
    items, events = histories(n, seed=3)
    users = [f"u{i:02d}" for i in range(n)]
    later = [np.append(s, 7) if i in active else s for i, s in enumerate(items)]
    later_events = [np.append(e, 1) if i in active else e for i, e in enumerate(events)]
    if retimed is None:
        return sequences_table(users, items, events), sequences_table(users, later, later_events)
    ts = event_times(items)
    later_ts = [np.append(t, t[-1] + 60_000) if i in active else t + 10**9 * (i == retimed) * (np.arange(len(t)) == len(t) - 1)
                for i, t in enumerate(ts)]
    return sequences_table(users, items, events, ts), sequences_table(users, later, later_events, later_ts)


def test_without_yesterday_every_user_is_inferred(lake_cfg):
    day0, _ = two_days()
    users, counts, plan = run_day(lake_cfg, DS, day0, registry.RegisteredEncoder("3", model(), {}))
    assert counts == {"users_inferred": 20, "users_carried_forward": 0} and plan.startswith("full")
    assert users.column("user_id").to_pylist() == sorted(day0.column("user_id").to_pylist())


def test_same_model_infers_only_changed_users_and_copies_the_others(lake_cfg, inferred):
    day0, day1 = two_days()
    champion = registry.RegisteredEncoder("3", model(), {})
    yesterday, _, _ = run_day(lake_cfg, shift(DS, -1), day0, champion)
    inferred.clear()
    today, counts, plan = run_day(lake_cfg, DS, day1, champion)
    assert plan.startswith("incremental")
    assert counts == {"users_inferred": 2, "users_carried_forward": 18}
    assert inferred == [["u02", "u05"]]
    assert today.column("user_id").to_pylist() == yesterday.column("user_id").to_pylist()
    for i in range(20):
        same = today.column("embedding")[i] == yesterday.column("embedding")[i]
        assert same == (i not in (2, 5)), i
    # The carried vectors are what inference would give anyway.
    full = predictor(champion.model)(day1.sort_by("user_id"))
    np.testing.assert_allclose(np.stack(today.column("embedding").to_numpy(zero_copy_only=False)),
                               np.stack(full.column("embedding").to_numpy(zero_copy_only=False)), rtol=1e-5, atol=1e-6)


def test_rerun_of_an_incremental_day_gives_the_same_rows(lake_cfg):
    day0, day1 = two_days()
    champion = registry.RegisteredEncoder("3", model(), {})
    run_day(lake_cfg, shift(DS, -1), day0, champion)
    first, counts, _ = run_day(lake_cfg, DS, day1, champion)
    again, counts_again, _ = run_day(lake_cfg, DS, day1, champion)
    assert again.equals(first) and counts_again == counts
    assert delta.read(lake_cfg, USER_EMBEDDINGS, where={"ds": DS}).num_rows == 20


def test_a_new_champion_recomputes_everyone(lake_cfg):
    day0, day1 = two_days()
    run_day(lake_cfg, shift(DS, -1), day0, registry.RegisteredEncoder("3", model(0), {}))
    users, counts, plan = run_day(lake_cfg, DS, day1, registry.RegisteredEncoder("4", model(1), {}))
    assert counts == {"users_inferred": 20, "users_carried_forward": 0} and "champion is 4" in plan
    assert set(users.column("model_version").to_pylist()) == {"4"}


def test_users_new_today_or_gone_since_yesterday(lake_cfg):
    day0, day1 = two_days()
    champion = registry.RegisteredEncoder("3", model(), {})
    run_day(lake_cfg, shift(DS, -1), day0.slice(0, 15), champion)  # u15..u19 are new today
    users, counts, _ = run_day(lake_cfg, DS, day1.slice(1), champion)  # u00 has left the window
    assert counts == {"users_inferred": 2 + 5, "users_carried_forward": 12}
    assert users.column("user_id").to_pylist() == [f"u{i:02d}" for i in range(1, 20)]


@pytest.mark.parametrize("time_buckets, carried", [(24, 19), (0, 20)])
def test_a_changed_ts_alone_is_changed_input_only_for_a_time_aware_champion(lake_cfg, inferred, time_buckets, carried):
    items, events = histories(20, seed=3)
    users = [f"u{i:02d}" for i in range(20)]
    ts = event_times(items)
    moved = next(i for i, s in enumerate(items) if len(s) >= 2 and s[-1] <= NUM_ITEMS)  # its last item is known
    # Only the moved user's last event changes: 10^6 s (12 days) later.
    later = [t + (10**9 if i == moved else 0) * (np.arange(len(t)) == len(t) - 1) for i, t in enumerate(ts)]
    champion = registry.RegisteredEncoder("3", model(n_time_buckets=time_buckets), {})
    yesterday, _, _ = run_day(lake_cfg, shift(DS, -1), sequences_table(users, items, events, ts), champion)
    inferred.clear()
    today, counts, plan = run_day(lake_cfg, DS, sequences_table(users, items, events, later), champion)
    assert plan.startswith("incremental")
    assert counts == {"users_inferred": 20 - carried, "users_carried_forward": carried}
    assert inferred == ([[users[moved]]] if carried < 20 else [])
    vectors = [np.stack(t.column("embedding").to_numpy(zero_copy_only=False)) for t in (yesterday, today)]
    assert (~np.isclose(*vectors).all(1)).tolist() == [i == moved and carried < 20 for i in range(20)]


@pytest.mark.parametrize("engine, time_buckets", [("pool", 0), ("ray_data", 0), ("pool", 24), ("ray_data", 24)])
def test_ray_job_gives_the_plain_predictor_vectors(tmp_path, one_torch_thread, engine, time_buckets):
    import ray

    started = not ray.is_initialized()
    cfg = load_config(overrides={"paths.state_dir": str(tmp_path), "ray.num_cpus": "2", "ray.inference_batch_size": "16",
                                 "ray.inference_threads": "1", "ray.inference_engine": engine})
    champion = registry.RegisteredEncoder("3", model(n_time_buckets=time_buckets), {})
    items, events = histories(40, seed=4)
    table = sequences_table([f"u{i:02d}" for i in reversed(range(40))], items, events, event_times(items))  # with ts
    try:
        users = embed.embed_users(cfg, table, champion)
    finally:
        if started:
            ray.shutdown()
    expected = predictor(champion.model)(table).sort_by("user_id")
    assert users.column("user_id").to_pylist() == [f"u{i:02d}" for i in range(40)]
    np.testing.assert_allclose(np.stack(users.column("embedding").to_numpy(zero_copy_only=False)),
                               np.stack(expected.column("embedding").to_numpy(zero_copy_only=False)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cpus, actors, expected", [(2.0, 2, 2), (2.0, 4, 2), (8.0, 4, 4), (1.0, 2, None)])
def test_actors_leave_a_cpu_for_the_read_tasks(monkeypatch, tmp_path, cpus, actors, expected):
    import ray

    from jobs.errors import FactoryError

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": cpus})
    cfg = load_config(overrides={"paths.state_dir": str(tmp_path), "ray.inference_actors": str(actors),
                                 "ray.actor_num_cpus": "0.5"})
    if expected is None:
        with pytest.raises(FactoryError, match="one for reading"):
            embed.actor_count(cfg)
    else:
        assert embed.actor_count(cfg) == expected


@pytest.mark.parametrize("time_buckets", [0, 24])
def test_on_the_engines_actors_write_the_files_and_spark_copies_carried_users(tmp_path, one_torch_thread, time_buckets):
    """embed_day_to_folders: the day's rows reach the table only through files the Ray actors and
    Spark's executors wrote (the driver commits their metadata), equal to the in-memory embed_day's.
    User 7's ts alone changes: changed input for a champion with time gaps only."""
    import ray

    from jobs.lakehouse import commit

    started = not ray.is_initialized()
    cfg = load_config(overrides={"paths.state_dir": str(tmp_path), "ray.num_cpus": "2", "ray.inference_batch_size": "8",
                                 "ray.inference_threads": "1"})
    champion = registry.RegisteredEncoder("3", model(n_time_buckets=time_buckets), {})
    day0, day1 = two_days(retimed=7)
    changed = (2, 5, 7) if time_buckets else (2, 5)
    results = {}
    try:
        for ds, table in ((shift(DS, -1), day0), (DS, day1)):
            version, files = write_sequences(cfg, ds, table)
            folders, counts, plan = embed.embed_day_to_folders(cfg, ds, version, files, champion)
            commit.commit_replace(cfg, folders, where={"ds": ds})
            results[ds] = (delta.read(cfg, USER_EMBEDDINGS, where={"ds": ds}).sort_by("user_id"), counts, plan)
    finally:
        if started:
            ray.shutdown()
    yesterday, counts0, plan0 = results[shift(DS, -1)]
    today, counts1, plan1 = results[DS]
    assert plan0.startswith("full") and counts0 == {"users_inferred": 20, "users_carried_forward": 0}
    assert plan1.startswith("incremental")
    assert counts1 == {"users_inferred": len(changed), "users_carried_forward": 20 - len(changed)}
    assert today.column("user_id").to_pylist() == [f"u{i:02d}" for i in range(20)]
    for i in range(20):
        assert (today.column("embedding")[i] == yesterday.column("embedding")[i]) == (i not in changed), i
    full = predictor(champion.model)(day1.sort_by("user_id"))
    np.testing.assert_allclose(np.stack(today.column("embedding").to_numpy(zero_copy_only=False)),
                               np.stack(full.column("embedding").to_numpy(zero_copy_only=False)), rtol=1e-5, atol=1e-6)
    assert not list((tmp_path / "lake" / "_staging").glob("*"))  # the changed users' staging files are gone


def test_embed_actors_take_device_and_precision_from_the_compute_config(tmp_path):
    cfg = load_config(overrides={"paths.state_dir": str(tmp_path), "compute.inference_dtype": "bf16"})
    champion = registry.RegisteredEncoder(version="1", model=model(), tags={})
    kwargs = embed.predictor_kwargs(cfg, champion)
    assert (kwargs["device"], kwargs["dtype"]) == ("cpu", "bf16")
    assert embed.actor_num_gpus(cfg) == 0.0
