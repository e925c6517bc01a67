"""Step `generative` (optional, generative.enabled): train the SID generator on the day's plays.

The examples come from jobs/steps/generative_data.py (the day's sequences, SIDs, embeddings and
prompts, without leakage), the training loop and decoding from jobs/steps/generative_training.py,
the model from models/generative.py.
"""

from __future__ import annotations

import mlflow
import numpy as np
import torch

from jobs.config import FactoryConfig
from jobs.days import parse_ds, shift
from jobs.errors import FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.tables import ITEM_EMBEDDINGS, ITEM_TOKENS, ITEMS, USER_EMBEDDINGS, USER_SEQUENCES
from jobs.steps import generative_data as day_data
from jobs.steps.generative_training import FitConfig, fit, generate, hit_metrics
from jobs.tracking.runs import StepResult, track_step
from models.residual_quantizer import sid_string


def run(ds: str, cfg: FactoryConfig, run_key: str | None = None) -> StepResult:
    """Step `generative` (optional, generative.enabled): train the SID generator on the day, log it to MLflow.

    Disabled (the default), the step records that it was disabled and trains nothing. Enabled, it
    trains on the plays of ds (jobs/steps/generative_data.py says how, without leakage), with the SID
    token embeddings started from the item vectors of ds-1 (the soft token's space) and the learned
    history bias (generative.history_bias), saves the model to <state_dir>/generative/ds=DS/ (what
    `factory recommend` reads) and logs that folder to the step's MLflow run as the artifact
    `generative_model`.
    """
    parse_ds(ds)
    g = cfg.generative
    with track_step(cfg, ds, "generative", run_key) as step:
        step.params(enabled=g.enabled)
        if not g.enabled:
            step.note("generative.enabled = false: no model trained (set it to true to train the SID generator)")
            step.metrics(enabled=0.0)
            return step.result
        day = day_data.load_day(cfg, ds)
        for spec in (USER_SEQUENCES, USER_EMBEDDINGS, ITEM_TOKENS, ITEMS, ITEM_EMBEDDINGS):
            step.read(spec, delta.current_version(cfg, spec))
        soft = g.soft_token and bool(day.embeddings.get(shift(ds, -1)))
        if g.soft_token and not soft:
            step.note(f"no user_embeddings of {shift(ds, -1)}: trained without the soft token")
        users = sorted(day.sequences)
        if g.max_users and len(users) > g.max_users:
            users = sorted(np.random.default_rng(g.seed).choice(users, g.max_users, replace=False).tolist())
        examples = day_data.training_examples(day, ds, g.history, g.targets_per_user, users, soft).without(soft, g.prompt)
        if len(examples) == 0:
            raise FactoryError(f"ds={ds}: no plays of that day with SIDs to train the generative model on; "
                               "run the features, embed and semantic_ids steps first.")
        user_dim = examples.users.shape[1] if examples.users is not None else 0
        model = day_data.new_model(cfg, day.vocabulary(), user_dim)
        start_vectors = day_data.sid_start_vectors(cfg, day, ds)
        if start_vectors is not None:  # SID tokens start where their items lie in the soft token's space
            model.init_sid_embeddings(start_vectors, g.seed)
        else:
            step.note(f"no item_embeddings of {shift(ds, -1)}: SID token embeddings start at random")
        fitted = fit(model, examples, FitConfig(minutes=g.minutes, lr=g.lr, batch_size=g.batch_size, seed=g.seed,
                                                warmup_steps=20, threads=torch.get_num_threads()))
        check = examples.rows(np.arange(min(len(examples), 200)))
        row_of = {tuple(t): r for r, t in enumerate(day.lookup.tokens.tolist())}  # trie row = lookup row
        consumed = [np.array([row_of[tuple(t)] for t in c.tolist()], np.int64) for c in check.consumed]
        rows, _ = generate(model, check, day_data.trie_of(day, model.vocab), g.beams, history=consumed)
        wanted = [day.lookup.item(sid_string(t)) for t in check.targets]
        folder = day_data.model_folder(cfg, ds)
        day_data.save_model(folder, model, {"ds": ds, "user_dim": user_dim, "soft_token": soft, "prompt": g.prompt,
                                            "history": g.history, "codebook_version": day.lookup.codebook_version})
        mlflow.log_artifacts(str(folder), day_data.MODEL_ARTIFACT)
        step.params(soft_token=soft, prompt=g.prompt, model_dir=g.model_dir or "tiny llama from scratch",
                    sid_embeddings="item_embeddings of ds-1" if start_vectors is not None else "random",
                    history_bias=None if model.history_bias is None else round(float(model.history_bias.detach()), 3),
                    codebook_version=day.lookup.codebook_version, model_folder=folder)
        step.metrics(enabled=1.0, users=len(users), examples=len(examples), epochs=fitted["epochs"], steps=fitted["steps"],
                     train_loss=fitted["history"][-1]["loss"], train_minutes=fitted["minutes"],
                     parameters=sum(p.numel() for p in model.parameters()),
                     train_sample_hr10=hit_metrics([[day.lookup.item_ids[i] for i in r if i >= 0] for r in rows],
                                                   np.array(wanted, dtype=object), ks=(10,), ndcg_ks=())["hr10"])
        return step.result
