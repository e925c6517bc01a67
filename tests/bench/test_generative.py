"""`factory bench generative`'s evaluation: consumed items masked inside the beam vs after decoding."""

import numpy as np
import pytest

from jobs.bench import generative
from jobs.bench.generative import evaluate
from jobs.steps.generative_training import Examples, generate
from models.generative import SidVocabulary, TrieTables
from tests.steps.test_generative import LEVELS, catalog, model_for


def test_masking_inside_the_beam_spends_no_slot_on_consumed_items_and_keeps_full_lists(one_torch_thread):
    vocab, tokens = SidVocabulary(("a",), LEVELS), catalog(20)
    model, trie = model_for(vocab, seed=3), TrieTables(tokens, LEVELS)
    users = 4
    examples = Examples([tokens[:3]] * users, [["a"]] * users, None, None)
    sids = np.vstack([np.zeros((1, len(LEVELS)), np.int64), tokens])  # item i + 1 = trie row i
    unmasked, _ = generate(model, examples, trie, beams=5)
    seen = [unmasked[u, :3] + 1 for u in range(users)]  # each user "consumed" their 3 best raw items
    ev = evaluate(model, examples, trie, sids, seen, targets=unmasked[:, 3] + 1, beams=5, unseen=np.zeros(users, bool))
    assert ev["beam_consumed_share"]["raw"] == 3 / 5
    assert ev["beam_consumed_share"]["masked_in_beam"] == 0.0
    assert ev["mean_list_masked_in_beam"] == 5 and ev["mean_list_after_rerank"] == 2
    assert ev["beam5"]["hr1"] == 1.0  # the 4th raw item is the best one left once the 3 are masked


def tiny_sasrec(folder, users: int = 30, items: int = 40, seed: int = 0):
    """A SASRec-format file (user item per line, in order) with nothing beside it: no titles, no users.dat."""
    rng = np.random.default_rng(seed)
    lines = [f"{u} {i}" for u in range(1, users + 1) for i in rng.choice(np.arange(1, items + 1), rng.integers(5, 10),
                                                                         replace=False)]
    path = folder / "tiny.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("published", [True, False])
def test_the_ablation_runs_on_a_dataset_without_text_or_users_and_reports_both_protocols(tmp_path, published,
                                                                                          one_torch_thread):
    import json

    from jobs.bench.generative import run_benchmark
    from models.generative import TinyLlamaConfig

    data = tiny_sasrec(tmp_path)
    sids_file = None
    if published:  # LETTER's format: 0-based item -> codes; two items share their codes (a de-duplication token follows)
        codes = {str(i): [f"<a_{i % 4}>", f"<b_{i // 4 % 4}>", f"<c_{i // 16}>"] for i in range(40)}
        codes["39"] = codes["38"]
        sids_file = tmp_path / "tiny.index.json"
        sids_file.write_text(json.dumps(codes))
    result = run_benchmark(data, seeds=(0,), minutes=0.2, steps=2, encoder_minutes=0.02, levels=2, codes=4, beams=5,
                           lm=TinyLlamaConfig(hidden=16, layers=1, heads=2, intermediate=32, max_positions=256),
                           cache_dir=tmp_path / "cache", log_to_mlflow=False, sids_file=sids_file)
    assert set(result["results"]) == {"baseline", "+ soft token"}  # no users.dat: the prompt configurations are skipped
    assert ("published" if published else "encoder's item vectors") in result["settings"]["sids"]
    assert len(result["settings"]["level_sizes"]) == (4 if published else 3)
    for r in result["results"].values():
        assert r["summary"]["beam_consumed_share"]["masked_in_beam"]["mean"] == 0.0
        assert "hr10" in r["summary"]["beam5_consumed_kept"]  # unfiltered beside seen-filtered
    assert {"unfiltered_hr10", "unfiltered_ndcg10", "hr10"} <= set(result["reference_encoder"])
    assert result["settings"]["distill"] == 0.0 and result["settings"]["history_items"] == 20  # short histories' defaults


def test_a_registered_bench_encoder_of_the_same_file_is_reused_and_one_of_other_data_is_refused(tmp_path, monkeypatch,
                                                                                                  one_torch_thread):
    import mlflow

    from jobs.bench.encoder import read_sasrec
    from jobs.bench.generative import registered_encoder, run_benchmark
    from jobs.config import load_config
    from jobs.errors import FactoryError
    from jobs.tracking import registry
    from jobs.tracking.runs import configure_mlflow
    from models.generative import TinyLlamaConfig
    from models.user_encoder import UserEncoder, UserEncoderConfig

    monkeypatch.setenv("FACTORY__PATHS__STATE_DIR", str(tmp_path / "state"))
    data = tiny_sasrec(tmp_path)
    dataset = read_sasrec(data)
    cfg = load_config(overrides={"mlflow.registered_model": "enc_bench_tiny"})
    configure_mlflow(cfg)
    encoder = UserEncoder(UserEncoderConfig(num_items=dataset.num_items, max_len=20, d_model=8, n_layers=1, n_heads=2))
    with mlflow.start_run():
        registry.register(cfg, encoder, {"data_sha256": dataset.sha256}, "bench")
        registry.register(cfg, encoder, {"data_sha256": "other"}, "elsewhere")
    with pytest.raises(FactoryError, match="trained on data with sha256 other"):
        registered_encoder(cfg, "models:/enc_bench_tiny@elsewhere", dataset)
    with pytest.raises(FactoryError, match="no such registered model version"):
        registered_encoder(cfg, "models:/enc_bench_tiny@nope", dataset)
    result = run_benchmark(data, seeds=(0,), steps=2, minutes=0.2, levels=2, codes=4, beams=5, configs=("+ soft token",),
                           lm=TinyLlamaConfig(hidden=16, layers=1, heads=2, intermediate=32, max_positions=256),
                           cache_dir=tmp_path / "cache", log_to_mlflow=False, encoder_model="models:/enc_bench_tiny@bench",
                           distill=0.9)
    assert result["settings"]["encoder_model"] == "models:/enc_bench_tiny@bench"
    assert result["settings"]["distill"] == 0.9 and "encoder's softmax" in result["settings"]["loss"]
    assert result["settings"]["encoder_minutes"] == 0  # loaded, not trained


@pytest.mark.parametrize("sids, evaluated, judged", [("residual k-means over the encoder's item vectors", 22363, True),
                                                     ("published codes from letter.json", 22363, False),
                                                     ("residual k-means over the encoder's item vectors", 2000, False)])
def test_the_tiger_bar_is_judged_only_with_the_factorys_own_sids_on_every_beauty_user(sids, evaluated, judged):
    def config(hr10, unf_hr10):
        return {"summary": {"beam30": {"hr10": {"mean": hr10}, "hr30": {"mean": hr10, "std": 0.0, "per_seed": [hr10]}},
                            "beam30_consumed_kept": {"hr10": {"mean": unf_hr10}, "ndcg10": {"mean": 0.04}}}}
    result = {"settings": {"beams": 30, "seeds": [0, 1, 2], "sids": sids},
              "dataset": {"sha256": generative.BEAUTY_SHA256, "users": 22363, "evaluated_users": evaluated},
              "reference_encoder": {"hr10": 0.08},
              "results": {"baseline": config(0.05, 0.05), "+ soft token": config(0.075, 0.066)}}
    rows = {row["figure"]: row for row in generative.judged_rows(result)}
    assert rows["generative HR@10 / encoder HR@10"]["value"] == pytest.approx(0.9375)  # the best configuration
    assert rows["generative HR@10 / encoder HR@10"]["met"] is True
    assert rows["generative Recall@10"]["value"] == 0.066
    assert rows["generative Recall@10"]["met"] is (True if judged else None)
    assert rows["generative NDCG@10"]["met"] is (True if judged else None)


def test_items_are_coded_by_the_encoders_vectors_unless_titles_are_asked_for(tmp_path, monkeypatch):
    import torch

    (tmp_path / "movies.dat").write_text("1::A (1999)::Drama\n")  # titles beside the data do not change the default

    class Encoder:
        def item_embeddings(self):
            return torch.from_numpy(np.random.default_rng(0).normal(size=(41, 8)).astype(np.float32))

    codes, source = generative.item_sids(tmp_path, 40, 2, 4, tmp_path / "cache", None, Encoder())
    assert source == "residual k-means over the encoder's item vectors" and codes.shape == (41, 3)
    monkeypatch.setattr(generative, "movielens_sids", lambda *args: "coded by titles")
    assert generative.item_sids(tmp_path, 40, 2, 4, tmp_path / "cache", None, Encoder(), titles=True)[0] == "coded by titles"


def test_configs_option_picks_configurations_in_ablation_order_and_names_the_valid_ones_on_a_typo():
    from jobs.errors import FactoryError

    assert generative.parse_configs("") == tuple(generative.CONFIGS)
    assert generative.parse_configs("+ soft token + prompt, baseline") == ("baseline", "+ soft token + prompt")
    with pytest.raises(FactoryError, match="choose from 'baseline'"):
        generative.parse_configs("soft token")


def test_generator_defaults_follow_history_length_as_chosen_on_each_dataset():
    from types import SimpleNamespace

    from jobs.bench.generative import LONG_HISTORY_GENERATOR, SHORT_HISTORY_GENERATOR, generator_defaults

    movielens_like = SimpleNamespace(interactions=165 * 100, sequences=[None] * 100)  # 165 events per user
    beauty_like = SimpleNamespace(interactions=9 * 100, sequences=[None] * 100)
    assert generator_defaults(movielens_like) == LONG_HISTORY_GENERATOR and LONG_HISTORY_GENERATOR.distill == 0.9
    assert generator_defaults(beauty_like) == SHORT_HISTORY_GENERATOR and SHORT_HISTORY_GENERATOR.distill == 0.0
