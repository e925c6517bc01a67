"""Step profile and what edits do in the next run, on the tiny world: day 1 built, edits made, day 2
built twice (edits off, then on) with the same champion."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from jobs.config import load_config
from jobs.errors import FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.tables import (
    ITEM_EMBEDDINGS,
    ITEM_VOCAB,
    ITEMS,
    TASTE_PROFILES,
    USER_EMBEDDINGS,
    USER_SEQUENCES,
)
from jobs.pipeline import run_day
from jobs.serving.neighbours import nearest_items
from jobs.serving.taste_profile import check_user, show_profile
from jobs.steps import profile_edits, semantic_ids, taste_feedback
from jobs.steps.features import EVENT_TYPE_CODES
from jobs.synthetic.generate import generate_drops, generated_days
from jobs.synthetic.worlds import TINY_WORLD
from tests.conftest import hashed_unit_vectors

UP_TO_PROFILE = ["catalog", "ingest", "features", "train", "embed", "semantic_ids", "index", "profile"]


def by_user(table) -> dict[str, dict]:
    return {row["user_id"]: row for row in table.to_pylist()}


@pytest.fixture(scope="module")
def world(tmp_path_factory, mlflow_store):
    overrides = {**TINY_WORLD, **mlflow_store, "paths.state_dir": str(tmp_path_factory.mktemp("state")),
                 "generator.days": "3", "features.full_rebuild_every_days": "0",
                 "profile.personal_weight": "0.5"}  # a blend, so both directions of an edit are exercised
    cfg = load_config(overrides=overrides)
    off = load_config(overrides={**overrides, "profile.apply_edits": "false"})
    generate_drops(cfg.generator, Path(cfg.landing_uri))
    day1, day2, day3 = generated_days(cfg.generator)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(semantic_ids, "encode_texts", hashed_unit_vectors)
        run_day(day1, cfg, steps=UP_TO_PROFILE)
        first = by_user(delta.read(cfg, TASTE_PROFILES, where={"ds": day1}))
        # Three users who played a few artists on day 1: one gets "more", one "less", one "forget".
        MORE, LESS, FORGET, RETURNS = [u for u in sorted(first)
                                       if sum(f["kind"] == "artist" for f in first[u]["facets"]) >= 2][:4]
        genres = lambda user: [f["name"] for f in first[user]["facets"] if f["kind"] == "genre"]  # noqa: E731
        all_genres = profile_edits.catalog_names(cfg, "genre")
        wanted = next(g for g in all_genres if g not in genres(MORE))
        unwanted = genres(LESS)[0]
        artist = next(f["name"] for f in first[FORGET]["facets"] if f["kind"] == "artist")
        profile_edits.record_edit(cfg, MORE, "more", "genre", wanted, from_ds=day2)
        profile_edits.record_edit(cfg, LESS, "less", "genre", unwanted, from_ds=day2)
        profile_edits.record_edit(cfg, FORGET, "forget", "artist", artist, from_ds=day2)
        returning = next(f["name"] for f in first[RETURNS]["facets"] if f["kind"] == "artist")
        profile_edits.record_edit(cfg, RETURNS, "forget", "artist", returning, from_ds=day2)
        run_day(day2, off, steps=["catalog", "ingest", "features", "train", "embed"])
        seq_off = by_user(delta.read(cfg, USER_SEQUENCES, where={"ds": day2}))
        emb_off = by_user(delta.read(cfg, USER_EMBEDDINGS, where={"ds": day2}))
        run_day(day2, cfg, steps=UP_TO_PROFILE[2:])
        seq_day2 = by_user(delta.read(cfg, USER_SEQUENCES, where={"ds": day2}))
        profiles = by_user(delta.read(cfg, TASTE_PROFILES, where={"ds": day2}))
        profile_edits.withdraw_edit(cfg, RETURNS, "artist", returning, from_ds=day3)
        [*_, features_day3] = run_day(day3, cfg, steps=["catalog", "ingest", "features"])
    return {"cfg": cfg, "days": (day1, day2), "users": (MORE, LESS, FORGET), "first": first,
            "wanted": wanted, "unwanted": unwanted, "artist": artist,
            "seq_off": seq_off, "emb_off": emb_off,
            "seq_on": seq_day2, "emb_on": by_user(delta.read(cfg, USER_EMBEDDINGS, where={"ds": day2})),
            "profiles": profiles, "returns": (RETURNS, returning), "day3": (day3, features_day3)}


def catalog_of(cfg) -> tuple[dict[int, str], dict[str, dict]]:
    vocab = delta.read(cfg, ITEM_VOCAB)
    items = by_item(delta.read(cfg, ITEMS))
    return dict(zip(vocab.column("item_idx").to_pylist(), vocab.column("item_id").to_pylist())), items


def by_item(table) -> dict[str, dict]:
    return {row["item_id"]: row for row in table.to_pylist()}


def test_profile_text_and_facets_reflect_the_users_history(world):
    cfg, (day1, _) = world["cfg"], world["days"]
    item_of, items = catalog_of(cfg)
    sequences = by_user(delta.read(cfg, USER_SEQUENCES, where={"ds": day1}))
    assert set(world["first"]) == set(sequences)
    for user in sorted(sequences)[:20]:
        row = sequences[user]
        plays = [items[item_of[i]] for i, e in zip(row["item_idx"], row["event_type"]) if e == 1]
        profile = world["first"][user]
        if not plays:
            assert profile["text"].startswith("No plays in the window yet")
            continue
        genres = Counter(p["genre"] for p in plays)
        share = {f["name"]: f["weight"] for f in profile["facets"] if f["kind"] == "genre"}
        top = max(genres.items(), key=lambda kv: (kv[1], [-ord(c) for c in kv[0]]))[0]
        assert share[top] == pytest.approx(genres[top] / len(plays))
        assert profile["text"].startswith(f"Mostly {top} ({round(100 * genres[top] / len(plays))}%)")
        artists = [f["name"] for f in profile["facets"] if f["kind"] == "artist"]
        assert all(a in profile["text"] for a in artists) and len(artists) <= cfg.profile.top_facets
        types = {f["name"]: f["weight"] for f in profile["facets"] if f["kind"] == "item_type"}
        assert sum(types.values()) == pytest.approx(1.0)
        assert len(profile["regions"]) == cfg.profile.regions and "nearest catalog regions: " in profile["text"]
        assert profile["model_version"] and profile["steered_embedding"] is None and profile["edits"] == []


def test_forget_removes_the_items_events_from_the_sequence_and_recommendations(world):
    MORE, LESS, FORGET = world["users"]
    cfg, (_, day2) = world["cfg"], world["days"]
    item_of, items = catalog_of(cfg)
    artist_of = lambda row: [items[item_of[i]]["artist"] for i in row["item_idx"]]  # noqa: E731
    assert world["artist"] in artist_of(world["seq_off"][FORGET])  # the edit off: the artist's plays are there
    assert world["artist"] not in artist_of(world["seq_on"][FORGET])
    assert world["emb_on"][FORGET]["embedding"] != world["emb_off"][FORGET]["embedding"]  # re-embedded
    everything = nearest_items(cfg, FORGET, day2, k=len(items))
    assert everything and not [r for r in everything if items[r["item_id"]]["artist"] == world["artist"]]
    assert world["artist"] not in world["profiles"][FORGET]["text"].split("; your edits")[0]
    assert f"your edits: forget artist:{world['artist']}" in world["profiles"][FORGET]["text"]


def plays_of(cfg, sequences: dict[str, dict], users: list[str]):
    """user_id, item_id, genre, artist, show of the users' plays in their sequences (the reference of
    profile.steering_plays)."""
    vocab, items = catalog_of(cfg)
    rows = [{"user_id": u, "item_id": vocab[i], **{c: items[vocab[i]][c] for c in ("genre", "artist", "show")}}
            for u in users for i, e in zip(sequences[u]["item_idx"], sequences[u]["event_type"])
            if e == EVENT_TYPE_CODES["play"]]
    return pa.Table.from_pylist(rows)


def test_steering_moves_the_vector_toward_more_and_away_from_less_within_the_bound(world):
    MORE, LESS, FORGET = world["users"]
    cfg, (_, day2) = world["cfg"], world["days"]
    vectors = delta.read(cfg, ITEM_EMBEDDINGS, where={"ds": day2})
    facets = [("genre", world["wanted"]), ("genre", world["unwanted"])]
    catalog_directions = taste_feedback.facet_directions(facets, delta.read(cfg, ITEMS), vectors)
    edits = pa.table({"user_id": [MORE, LESS], "action": ["more", "less"], "kind": ["genre", "genre"],
                      "name": [world["wanted"], world["unwanted"]]})
    personal = taste_feedback.personal_directions(edits, plays_of(cfg, world["seq_on"], [MORE, LESS]), vectors)
    assert (LESS, "genre", world["unwanted"]) in personal  # LESS played the genre it asks less of
    bound = np.sqrt(1 - cfg.profile.steer_strength ** 2)
    for user, genre, sign in ((MORE, world["wanted"], 1), (LESS, world["unwanted"], -1)):
        raw = np.asarray(world["emb_on"][user]["embedding"], np.float32)
        steered = np.asarray(world["profiles"][user]["steered_embedding"], np.float32)
        direction = taste_feedback.edit_direction(catalog_directions[("genre", genre)], personal.get((user, "genre", genre)),
                                                  cfg.profile.personal_weight)
        assert sign * (steered @ direction) > sign * (raw @ direction)
        assert steered @ raw >= bound - 1e-5 and np.linalg.norm(steered) == pytest.approx(1.0, abs=1e-5)
        reference = taste_feedback.steer(raw[None], cfg.profile.steer_strength * sign * direction[None])[0]
        np.testing.assert_allclose(steered, reference, atol=1e-6)  # Spark's plays and expression = the reference
        assert world["emb_on"][user] == world["emb_off"][user]  # the raw vector is published unchanged
    top = nearest_items(cfg, MORE, day2, k=10)
    assert top[0]["score"] == pytest.approx(float(top[0]["score"]))  # served from the steered vector
    assert show_profile(cfg, MORE, day2)["steered"] is True


def test_unedited_users_sequences_and_vectors_are_identical_with_edits_on_and_off(world):
    MORE, LESS, FORGET = world["users"]
    edited = {MORE, LESS, FORGET, world["returns"][0]}
    assert set(world["seq_on"]) == set(world["seq_off"])
    for user in set(world["seq_on"]) - edited:
        assert world["seq_on"][user] == world["seq_off"][user], user
        assert world["emb_on"][user] == world["emb_off"][user], user  # byte-identical float lists
    assert all(world["profiles"][u]["steered_embedding"] is None for u in set(world["profiles"]) - edited)


def test_the_next_days_profile_lists_the_edits_in_force(world):
    MORE, LESS, FORGET = world["users"]
    cfg, (day1, day2) = world["cfg"], world["days"]
    shown = show_profile(cfg, MORE, day2)
    assert shown["edits_in_force"] == [f"more genre:{world['wanted']}"]
    assert f"your edits: more genre:{world['wanted']}." in shown["text"]
    assert [e["status"] for e in show_profile(cfg, MORE, day1)["edits"]] == [f"from {day2}"]


def test_an_unknown_user_gets_one_sentence(world):
    with pytest.raises(FactoryError, match=r"^User 'u_999999' has no taste profile on .*; check the id"):
        show_profile(world["cfg"], "u_999999")
    with pytest.raises(FactoryError, match=r"^Unknown user 'nobody': no taste profile or listening on"):
        check_user(world["cfg"], "nobody")


def test_the_cli_shows_a_profile_and_records_withdraws_and_repeats_edits(world, monkeypatch):
    from typer.testing import CliRunner

    from jobs.cli import app

    cfg, (_, day2) = world["cfg"], world["days"]
    MORE, _, _ = world["users"]
    monkeypatch.setenv("FACTORY__PATHS__STATE_DIR", cfg.paths.state_dir)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    shown = runner.invoke(app, ["profile", "show", MORE, "--ds", day2])
    assert shown.exit_code == 0 and "Mostly " in shown.output and f"more genre:{world['wanted']}" in shown.output
    genre = world["unwanted"]
    first = runner.invoke(app, ["profile", "edit", MORE, "--less", f"genre:{genre.upper()}"])
    again = runner.invoke(app, ["profile", "edit", MORE, "--less", f"genre:{genre}"])
    withdrawn = runner.invoke(app, ["profile", "withdraw", MORE, f"genre:{genre}"])
    assert (first.exit_code, again.exit_code, withdrawn.exit_code) == (0, 0, 0)
    assert f"recorded less genre:{genre}" in first.output and "(unchanged: it already was)" in again.output
    assert f"withdrew genre:{genre}" in withdrawn.output
    status = {e["edit"]: e["status"] for e in show_profile(cfg, MORE, day2)["edits"]}
    assert status[f"less genre:{genre}"].startswith("withdrawn before")  # from the next run on, withdrawn at once


class Recorder:
    """A StepRun stand-in for calling the features step's builders directly."""

    def read(self, spec, version) -> None:
        pass


def test_the_increment_after_a_forget_equals_the_full_recompute_and_a_withdrawn_forget_brings_events_back(world):
    from jobs.lakehouse.spark import to_arrow
    from jobs.steps import features

    cfg, (day3, result) = world["cfg"], world["day3"]
    _, FORGET, (returns, artist) = world["users"][1], world["users"][2], world["returns"]
    assert result.params["mode"] == "incremental" and result.metrics["users_rebuilt_for_edits"] == 1
    committed = by_user(delta.read(cfg, USER_SEQUENCES, where={"ds": day3}))
    full = by_user(to_arrow(features.build_user_sequences(cfg, day3, Recorder(), taste_feedback.forgotten_on(cfg, day3)),
                            USER_SEQUENCES))
    assert committed == full  # the forget user's increment left the artist out without a rebuild
    item_of, items = catalog_of(cfg)
    artists = lambda row: {items[item_of[i]]["artist"] for i in row["item_idx"]}  # noqa: E731
    assert world["artist"] not in artists(committed[FORGET])
    assert artist not in artists(world["seq_on"][returns]) and artist in artists(committed[returns])
