"""`factory recommend` applies the user's profile edits: an item a forget edit names is never kept."""

from jobs.serving.recommend import recommend
from jobs.steps import generative, profile_edits
from tests.steps.test_generative import DS, tiny_lake


def test_recommend_drops_items_the_user_forgot(tmp_path, one_torch_thread):
    cfg = tiny_lake(tmp_path, enabled=True)
    generative.run(DS, cfg)
    before, other = recommend(cfg, "u_001", k=3), recommend(cfg, "u_002", k=3)
    first = next(d["item_id"] for d in before["decisions"] if d["kept"])
    profile_edits.record_edit(cfg, "u_001", "forget", "item", first, from_ds=DS)
    after = recommend(cfg, "u_001", k=3)
    reasons = {d["item_id"]: d["reason"] for d in after["decisions"] if d["item_id"] == first}
    assert first not in {d["item_id"] for d in after["decisions"] if d["kept"]}
    assert set(reasons.values()) == {"forgotten: the user's profile edit"}
    assert recommend(cfg, "u_002", k=3)["decisions"] == other["decisions"]  # another user's answer is unchanged


def test_more_and_less_edits_of_genres_enter_the_generative_prompt_as_tokens(tmp_path, one_torch_thread):
    import pyarrow as pa

    from jobs.lakehouse import delta
    from jobs.lakehouse.tables import ITEMS
    from jobs.steps.generative_data import load_day

    cfg = tiny_lake(tmp_path, enabled=True)
    items = delta.read(cfg, ITEMS).to_pylist()
    for i, row in enumerate(items):
        row["genre"] = "jazz" if i % 2 else "rock"
    delta.upsert(cfg, ITEMS, pa.Table.from_pylist(items, schema=ITEMS.schema))
    profile_edits.record_edit(cfg, "u_001", "more", "genre", "Jazz", from_ds=DS)  # names match case-insensitively
    profile_edits.record_edit(cfg, "u_001", "less", "genre", "rock", from_ds=DS)
    profile_edits.record_edit(cfg, "u_002", "forget", "genre", "rock", from_ds=DS)  # forget is not a prompt token
    day = load_day(cfg, DS)
    assert set(day.vocabulary().prompt_tokens) >= {"more:genre=jazz", "less:genre=jazz", "more:genre=rock", "less:genre=rock"}
    assert day.prompt([], user_id="u_001")[2:] == ["more:genre=jazz", "less:genre=rock"]
    assert day.prompt([], user_id="u_002")[2:] == [] and day.prompt([], user_id="u_003")[2:] == []
    generative.run(DS, cfg)
    assert recommend(cfg, "u_001", k=3)["prompt"][2:] == ["more:genre=jazz", "less:genre=rock"]
