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
