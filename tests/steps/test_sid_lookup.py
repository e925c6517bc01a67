"""SID lookups (jobs/steps/sid_lookup.py): both directions, the prefix trie, the collision policies, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from jobs.cli import sid_app
from jobs.config import load_config
from jobs.errors import FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.tables import EVENTS, ITEM_TOKENS
from jobs.steps.sid_lookup import SidTrie, build_lookup, load_lookup, parse_sid, resolve_bare_codes
from models.residual_quantizer import sid_string

# Three levels + de-duplication token; items a, b, c share the code 1-2-3.
TOKENS = {"a": [1, 2, 3, 0], "b": [1, 2, 3, 1], "c": [1, 2, 3, 2], "d": [1, 2, 5, 0], "e": [1, 7, 0, 0], "f": [4, 0, 0, 0]}
DS = "2026-02-01"


def lookup(policy: str, plays: dict | None = None):
    return build_lookup(3, list(TOKENS), np.array(list(TOKENS.values())), policy, plays, DS)


def test_trie_lists_valid_next_tokens_and_items_under_a_prefix():
    trie = SidTrie(np.array(list(TOKENS.values())), list(TOKENS))
    assert trie.next_tokens([]) == [1, 4]
    assert trie.next_tokens([1]) == [2, 7]
    assert trie.next_tokens([1, 2]) == [3, 5]
    assert trie.next_tokens([1, 2, 3]) == [0, 1, 2]
    assert trie.next_tokens([1, 2, 3, 1]) == []  # complete
    assert trie.next_tokens([9]) == [] and trie.items([9]) == []
    assert trie.items([1, 2]) == ["a", "b", "c", "d"]
    assert trie.item([1, 2, 3, 1]) == "b" and trie.item([1, 2, 3]) is None


def test_trie_matches_a_brute_force_scan_on_random_sids():
    rng = np.random.default_rng(0)
    tokens = np.unique(rng.integers(0, 4, (300, 4)), axis=0)
    ids = [f"i{n}" for n in range(len(tokens))]
    shuffled = rng.permutation(len(tokens))  # the trie sorts its rows itself
    trie = SidTrie(tokens[shuffled], [ids[i] for i in shuffled])
    for prefix in ([], [0], [3, 1], [2, 2, 2]):
        under = [t for t in tokens.tolist() if t[: len(prefix)] == prefix]
        assert trie.next_tokens(prefix) == sorted({t[len(prefix)] for t in under})
        assert sorted(trie.items(prefix)) == sorted(ids[i] for i, t in enumerate(tokens.tolist()) if t[: len(prefix)] == prefix)


def test_trie_refuses_duplicate_sequences():
    with pytest.raises(ValueError, match="unique"):
        SidTrie(np.array([[1, 2], [1, 2]]), ["a", "b"])


def test_round_trip_item_to_sid_to_item_under_both_policies():
    for policy in ("dedup", "popular"):
        found = lookup(policy)
        for item in TOKENS:
            assert found.item(found.sid(item)) == item


def test_dedup_policy_needs_the_token_for_a_shared_code_and_its_trie_holds_full_sids():
    found = lookup("dedup")
    assert found.trie.depth == 4
    assert found.item("1-2-5") == "d"  # one item with that code: unambiguous
    with pytest.raises(FactoryError, match="3 items share the code 1-2-3"):
        found.item("1-2-3")


def test_popular_policy_resolves_a_shared_code_to_the_days_most_played_item():
    found = lookup("popular", plays={"b": 5, "c": 9, "a": 1})
    assert found.item("1-2-3") == "c"
    assert found.trie.depth == 3 and found.trie.item([1, 2, 3]) == "c"
    assert found.trie.next_tokens([1, 2]) == [3, 5]
    assert found.items_under("1-2-3") == ["a", "b", "c"]  # the others keep their full SIDs
    assert found.item("1-2-3-0") == "a"
    # No plays: the lowest token (the item that had the code first) wins.
    assert lookup("popular").item("1-2-3") == "a"


def test_resolve_bare_codes_breaks_ties_by_the_lowest_token():
    tokens = np.array([[0, 1], [0, 0], [1, 0]])
    winners = resolve_bare_codes(tokens, np.array([3, 3, 0]))
    assert sorted(winners.tolist()) == [1, 2]


@pytest.mark.parametrize("bad", ["1-x", "1--2", "abc"])
def test_parse_sid_rejects_what_is_not_tokens(bad):
    with pytest.raises(FactoryError, match="not a SID"):
        parse_sid(bad)


@pytest.fixture
def lake_cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY__PATHS__STATE_DIR", str(tmp_path))
    cfg = load_config()
    rows = [{"codebook_version": v, "item_id": i, "tokens": t, "sid": sid_string(t), "text_hash": "h",
             "assigned_ds": DS} for v in (1, 2) for i, t in TOKENS.items()]
    rows[0]["tokens"], rows[0]["sid"] = [9, 9, 9, 0], "9-9-9-0"  # item a had another SID in version 1
    delta.upsert(cfg, ITEM_TOKENS, pa.Table.from_pylist(rows, schema=ITEM_TOKENS.schema))
    plays = [{"event_id": f"e{n}", "user_id": "u", "item_id": "b", "item_type": "track", "event_type": event,
              "ts": 0, "ms_played": 1, "ds": DS} for n, event in enumerate(["play", "play", "skip"])]
    delta.replace_partition(cfg, EVENTS, pa.Table.from_pylist(plays, schema=EVENTS.schema), {"ds": DS})
    return cfg


def test_load_lookup_reads_a_version_and_the_days_plays(lake_cfg):
    assert load_lookup(lake_cfg).codebook_version == 2
    assert load_lookup(lake_cfg, version=1).sid("a") == "9-9-9-0"
    popular = load_lookup(lake_cfg, policy="popular")
    assert popular.ds == DS and popular.item("1-2-3") == "b"
    with pytest.raises(FactoryError, match="version 7 has no item tokens"):
        load_lookup(lake_cfg, version=7)


def test_load_lookup_without_tokens_is_a_clear_error(tmp_path):
    with pytest.raises(FactoryError, match="run the semantic_ids step"):
        load_lookup(load_config(overrides={"paths.state_dir": str(tmp_path)}))


def test_cli_lookup_and_prefix(lake_cfg):
    runner = CliRunner()
    done = runner.invoke(sid_app, ["lookup", "d"])
    assert done.exit_code == 0 and json.loads(done.stdout)["sid"] == "1-2-5-0"
    done = runner.invoke(sid_app, ["lookup", "1-2-3", "--policy", "popular"])
    answer = json.loads(done.stdout)
    assert answer["item_id"] == "b" and answer["items_sharing_code"] == ["a", "b", "c"]
    done = runner.invoke(sid_app, ["prefix", "1-2"])
    answer = json.loads(done.stdout)
    assert answer["next_tokens"] == [3, 5] and answer["items"] == 4 and answer["depth"] == 4
    assert json.loads(runner.invoke(sid_app, ["prefix", "1-2-5-0"]).stdout)["complete_item"] == "d"
    done = runner.invoke(sid_app, ["prefix", "8-8"])
    assert done.exit_code != 0 and "No SID starts with 8-8" in str(done.exception)
