"""Profile edits (jobs/steps/profile_edits.py): recorded once, withdrawn, and names checked against the catalog."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from jobs.errors import FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.tables import ITEMS
from jobs.steps import profile_edits
from jobs.steps.taste_feedback import forgotten_items

CATALOG = [("trk_000001", "track", "jazz", "Ada Kim", None), ("trk_000002", "track", "neo jazz", "Ada Kim", None),
           ("trk_000003", "track", "techno", "Ben Ito", None), ("epi_000001", "episode", "true crime", None, "Cold Case Files")]


@pytest.fixture
def cfg(lake_cfg):
    rows = [{c: None for c in ITEMS.schema.names} | {"item_id": i, "item_type": t, "genre": g, "artist": a, "show": s,
                                                      "title": i, "first_seen_ds": "2026-01-01"}
            for i, t, g, a, s in CATALOG]
    delta.upsert(lake_cfg, ITEMS, pa.Table.from_pylist(rows, ITEMS.schema))
    return lake_cfg


def edit(cfg, action="more", kind="genre", name="jazz", from_ds="2026-01-02", **kwargs):
    return profile_edits.record_edit(cfg, "u_000001", action, kind, name, from_ds,
                                     now=dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC), **kwargs)


def test_a_repeated_edit_changes_nothing_and_names_take_the_catalogs_spelling(cfg):
    assert edit(cfg, name="JAZZ") is True
    version = delta.current_version(cfg, profile_edits.PROFILE_EDITS)
    assert edit(cfg) is False
    rows = profile_edits.read_edits(cfg).to_pylist()
    assert len(rows) == 1 and rows[0]["name"] == "jazz" and rows[0]["action"] == "more"
    assert profile_edits.read_edits(cfg, "u_000001").num_rows == 1
    assert delta.read(cfg, profile_edits.PROFILE_EDITS, version=version).to_pylist() == rows
    assert edit(cfg, action="less") is True  # another action on the same facet replaces the first
    assert [r["action"] for r in profile_edits.read_edits(cfg).to_pylist()] == ["less"]


def test_a_withdrawn_edit_is_in_force_only_before_the_withdrawal(cfg):
    edit(cfg, action="forget", kind="artist", name="ada kim")
    assert profile_edits.withdraw_edit(cfg, "u_000001", "artist", "Ada Kim", from_ds="2026-01-04") is True
    assert profile_edits.withdraw_edit(cfg, "u_000001", "artist", "Ada Kim", from_ds="2026-01-05") is False
    edits = profile_edits.read_edits(cfg)
    assert [profile_edits.in_force(edits, ds).num_rows for ds in ("2026-01-01", "2026-01-02", "2026-01-03",
                                                                  "2026-01-04")] == [0, 1, 1, 0]
    assert edit(cfg, action="forget", kind="artist", name="Ada Kim", from_ds="2026-01-06") is True  # re-made
    assert profile_edits.in_force(profile_edits.read_edits(cfg), "2026-01-06").num_rows == 1


def test_withdrawing_an_edit_the_user_never_made_names_their_edits(cfg):
    edit(cfg)
    with pytest.raises(FactoryError, match=r"no edit of show:Cold Case Files to withdraw; their edits: more genre:jazz\."):
        profile_edits.withdraw_edit(cfg, "u_000001", "show", "Cold Case Files", from_ds="2026-01-03")


@pytest.mark.parametrize("kind, name, message", [
    ("genre", "jaz", r"No genre named 'jaz' in the catalog; close matches: jazz, neo jazz\."),
    ("artist", "Ada Kimm", r"No artist named 'Ada Kimm' in the catalog; close matches: Ada Kim\."),
    ("show", "polka hour", r"No show named 'polka hour' in the catalog; no close match among 1 show names\."),
])
def test_an_unknown_name_gets_one_sentence_listing_close_matches(cfg, kind, name, message):
    with pytest.raises(FactoryError, match=message):
        edit(cfg, kind=kind, name=name)
    assert delta.current_version(cfg, profile_edits.PROFILE_EDITS) is None  # nothing was written


@pytest.mark.parametrize("text, message", [
    ("jazz", r"'jazz' is not KIND:NAME"), ("genr:jazz", r"Unknown kind 'genr' in 'genr:jazz'; kinds are genre, artist"),
])
def test_a_malformed_facet_gets_one_sentence(text, message):
    with pytest.raises(FactoryError, match=message):
        profile_edits.parse_facet(text)


def test_forget_expands_a_genre_artist_show_or_item_to_its_items(cfg):
    for kind, name in (("artist", "Ada Kim"), ("show", "Cold Case Files"), ("item", "trk_000003")):
        edit(cfg, action="forget", kind=kind, name=name)
    forgotten = forgotten_items(profile_edits.read_edits(cfg), delta.read(cfg, ITEMS))
    assert forgotten.column("item_id").to_pylist() == ["epi_000001", "trk_000001", "trk_000002", "trk_000003"]
    assert profile_edits.edits_in_force(cfg, "2026-01-02").num_rows == 3
    off = type(cfg)(**{**cfg.__dict__, "profile": type(cfg.profile)(apply_edits=False)})
    assert profile_edits.edits_in_force(off, "2026-01-02").num_rows == 0  # the feature off: nothing applies
