"""The day's data for generative retrieval, and the saved model: what the step trains on and recommend reads.

Training on day ds (no leakage): targets are the items a user played ON ds, the history is what
came before each of them (user_sequences of ds), and the soft token is the user's embedding of
the day BEFORE (user_embeddings of ds-1, from data up to ds-1). Serving after ds uses the
embeddings of ds and the whole sequence. Prompt tokens come from the day's own data (how much of
the history is episodes, how active the user is), since the generated logs have no demographics.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mlflow
import numpy as np
import torch

from jobs.config import FactoryConfig
from jobs.days import day_bounds_ms, shift
from jobs.errors import FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.tables import ITEM_EMBEDDINGS, ITEM_VOCAB, ITEMS, USER_EMBEDDINGS, USER_SEQUENCES
from jobs.steps.generative_training import Examples
from jobs.steps.profile_edits import edits_in_force
from jobs.steps.sid_lookup import SidLookup, load_lookup
from models.generative import (
    GenerativeRecommender,
    SidVocabulary,
    TinyLlamaConfig,
    TrieTables,
    pretrained_lm,
    sid_token_vectors,
    tiny_llama,
)

PROMPT_TOKENS = tuple(f"episodes={v}" for v in ("none", "some", "most")) + tuple(f"activity={v}" for v in ("low", "mid", "high"))
# A user's more/less edits in force enter the prompt as text, one token per edit ("more:genre=jazz"),
# for the kinds whose names form a small closed set (the catalog's genres and shows); artists and
# single items are too many for a from-scratch vocabulary (their edits still steer the soft token).
EDIT_PROMPT_KINDS = ("genre", "show")


def edit_token(action: str, kind: str, name: str) -> str:
    return f"{action}:{kind}={name}"


@dataclasses.dataclass
class DayData:
    """Everything of one day the generator needs, keyed by the factory's own ids."""

    lookup: SidLookup  # item_id <-> full SID (codes + de-duplication token) of the latest codebook
    item_type: dict[str, str]
    sequences: dict[str, tuple[list[str], np.ndarray]]  # user_id -> (item ids oldest first, ts in ms)
    embeddings: dict[str, dict[str, np.ndarray]]  # ds -> user_id -> vector
    edit_vocabulary: tuple[str, ...] = ()  # every edit token the catalog allows (EDIT_PROMPT_KINDS)
    edits: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # user_id -> edit tokens in force

    def sid(self, item_id: str) -> np.ndarray | None:
        row = self.lookup._row.get(item_id)
        return None if row is None else self.lookup.tokens[row]

    def prompt(self, items: list[str], events_in_window: int | None = None, user_id: str | None = None) -> list[str]:
        """Prompt tokens: the share of episodes, the activity, and the user's more/less edits in force."""
        share = np.mean([self.item_type.get(i) == "episode" for i in items]) if items else 0.0
        n = len(items) if events_in_window is None else events_in_window
        return [f"episodes={'none' if share == 0 else 'some' if share < 0.5 else 'most'}",
                f"activity={'low' if n < 10 else 'mid' if n < 40 else 'high'}", *self.edits.get(user_id, [])]

    def vocabulary(self) -> SidVocabulary:
        tokens = self.lookup.tokens
        sizes = tuple(int(tokens[:, level].max()) + 1 for level in range(tokens.shape[1]))
        return SidVocabulary(PROMPT_TOKENS + self.edit_vocabulary, sizes)


def load_day(cfg: FactoryConfig, ds: str, embedding_days=(0, -1)) -> DayData:
    """SIDs, item types, the sequences of ds and the user embeddings of ds + each shift in embedding_days."""
    lookup = load_lookup(cfg, policy="dedup")
    items = delta.read(cfg, ITEMS, columns=["item_id", "item_type", *EDIT_PROMPT_KINDS])
    vocab = delta.read(cfg, ITEM_VOCAB, columns=["item_id", "item_idx"])
    by_idx = dict(zip(vocab.column("item_idx").to_pylist(), vocab.column("item_id").to_pylist()))
    rows = delta.read(cfg, USER_SEQUENCES, where={"ds": ds}, columns=["user_id", "item_idx", "ts"])
    if rows.num_rows == 0:
        raise FactoryError(f"ds={ds}: user_sequences has no rows; run the features step for that day first.")
    sequences = {u: ([by_idx.get(i) for i in idx], np.asarray(ts, dtype=np.int64))
                 for u, idx, ts in zip(rows.column("user_id").to_pylist(), rows.column("item_idx").to_pylist(),
                                       rows.column("ts").to_pylist())}
    embeddings = {}
    for days in embedding_days:
        day = shift(ds, days)
        table = delta.read(cfg, USER_EMBEDDINGS, where={"ds": day}, columns=["user_id", "embedding"])
        embeddings[day] = dict(zip(table.column("user_id").to_pylist(),
                                   (np.asarray(v, np.float32) for v in table.column("embedding").to_pylist())))
    return DayData(lookup, dict(zip(items.column("item_id").to_pylist(), items.column("item_type").to_pylist())),
                   sequences, embeddings, *edit_prompts(cfg, ds, items))


def edit_prompts(cfg: FactoryConfig, ds: str, items) -> tuple[tuple[str, ...], dict[str, list[str]]]:
    """(every edit token of the catalog's genres and shows, user_id -> the tokens of their more/less
    edits in force on ds)."""
    vocabulary = tuple(edit_token(action, kind, name) for kind in EDIT_PROMPT_KINDS
                       for name in sorted({n for n in items.column(kind).to_pylist() if n})
                       for action in ("more", "less"))
    by_user: dict[str, list[str]] = {}
    for edit in edits_in_force(cfg, ds).to_pylist():
        if edit["action"] in ("more", "less") and edit["kind"] in EDIT_PROMPT_KINDS:
            by_user.setdefault(edit["user_id"], []).append(edit_token(edit["action"], edit["kind"], edit["name"]))
    return vocabulary, by_user


def training_examples(day: DayData, ds: str, history: int, per_user: int, users: list[str], soft: bool):
    """(histories, prompts, user vectors or None, targets, consumed SIDs) for the plays of ds by `users`."""
    start, _ = day_bounds_ms(ds)
    yesterday = day.embeddings.get(shift(ds, -1), {})
    histories, prompts, vectors, targets, consumed = [], [], [], [], []
    for user in users:
        items, ts = day.sequences[user]
        if soft and user not in yesterday:
            continue  # a new user has no embedding of yesterday: the soft token would be made up
        sids = [day.sid(i) for i in items]
        on_day = [t for t in np.flatnonzero(ts >= start) if t > 0][-per_user:]
        for t in on_day:
            target, before = sids[t], sids[max(0, t - history):t]
            if target is None or any(b is None for b in before):
                continue  # an item without a SID (none yet in this codebook) cannot be generated
            histories.append(np.array([b[:-1] for b in before]).reshape(-1, len(target) - 1))
            prompts.append(day.prompt(items[:t], user_id=user))
            vectors.append(yesterday[user] if soft else None)
            targets.append(target)
            consumed.append(np.array([s for s in sids[:t] if s is not None], np.int16).reshape(-1, len(target)))  # codes < 2**15
    dim = len(next(iter(yesterday.values()))) if yesterday else 0
    return Examples(histories, prompts, np.array(vectors, np.float32).reshape(-1, dim) if soft else None,
                    np.array(targets, np.int64).reshape(len(targets), -1), consumed)


def sid_start_vectors(cfg: FactoryConfig, day: DayData, ds: str) -> list[np.ndarray] | None:
    """Per SID level, where the SID token embeddings start (models.generative.sid_token_vectors): the
    item vectors of ds-1, the space of the soft token the model trains with; None when that day has none."""
    table = delta.read(cfg, ITEM_EMBEDDINGS, where={"ds": shift(ds, -1)}, columns=["item_id", "embedding"])
    vectors = dict(zip(table.column("item_id").to_pylist(), table.column("embedding").to_pylist()))
    rows = [r for r, item in enumerate(day.lookup.item_ids) if item in vectors]
    if not rows:
        return None
    return sid_token_vectors(day.lookup.tokens[rows], np.array([vectors[day.lookup.item_ids[r]] for r in rows], np.float32),
                             day.vocabulary().level_sizes)


def save_model(folder: Path, model: GenerativeRecommender, meta: dict) -> None:
    """LM (save_pretrained), projector weights and the vocabulary/meta as JSON into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    model.lm.save_pretrained(folder / "lm")
    if model.projector is not None:
        torch.save(model.projector.state_dict(), folder / "projector.pt")
    vocab = model.vocab
    (folder / "meta.json").write_text(json.dumps({**meta, "prompt_tokens": list(vocab.prompt_tokens),
                                                  "level_sizes": list(vocab.level_sizes), "base": vocab.base,
                                                  "soft_last": vocab.soft_last,
                                                  "history_bias": None if model.history_bias is None
                                                  else float(model.history_bias.detach())}, indent=1))


def load_model(folder: Path) -> tuple[GenerativeRecommender, dict]:
    from transformers import AutoModelForCausalLM

    if not (folder / "meta.json").is_file():
        raise FactoryError(f"No generative model in {folder}; enable the generative step (generative.enabled = true) and run it.")
    meta = json.loads((folder / "meta.json").read_text())
    vocab = SidVocabulary(tuple(meta["prompt_tokens"]), tuple(meta["level_sizes"]), meta["base"],
                          meta.get("soft_last", False))  # saved before the field: SOFT after BOS
    bias = meta.get("history_bias")
    model = GenerativeRecommender(AutoModelForCausalLM.from_pretrained(folder / "lm"), vocab, meta["user_dim"],
                                  history_bias=bias is not None)
    if bias is not None:
        model.history_bias.data.fill_(bias)
    if model.projector is not None:
        model.projector.load_state_dict(torch.load(folder / "projector.pt"))
    return model.eval(), meta


def model_folder(cfg: FactoryConfig, ds: str) -> Path:
    return cfg.state_dir / "generative" / f"ds={ds}"


def latest_model_folder(cfg: FactoryConfig, ds: str | None) -> Path:
    """The model trained on ds, or on the latest day before it (default: the latest of all)."""
    root = cfg.state_dir / "generative"
    days = sorted(p.name.split("=", 1)[1] for p in root.glob("ds=*") if (p / "meta.json").is_file()) if root.is_dir() else []
    days = [d for d in days if ds is None or d <= ds]
    if not days:
        raise FactoryError(f"No generative model trained{'' if ds is None else f' on or before {ds}'}; set "
                           "generative.enabled = true and run `factory run --ds D --step generative`.")
    return root / f"ds={days[-1]}"


MODEL_ARTIFACT = "generative_model"  # the artifact folder of the generative step's MLflow run
MODEL_SOURCES = ("auto", "local", "mlflow")


def logged_model_folder(cfg: FactoryConfig, ds: str | None) -> Path:
    """The model logged to MLflow by the newest finished generative run of ds (or of the latest day
    before it), downloaded once under <state_dir>/generative/mlflow/<run id>: how a host that does not
    share the training host's state folder serves it."""
    from jobs.tracking.runs import TAG_DS, TAG_KIND, TAG_STEP, configure_mlflow

    experiment = configure_mlflow(cfg)
    runs = mlflow.search_runs([experiment], output_format="list",
                              filter_string=f"tags.`{TAG_KIND}` = 'step' AND tags.`{TAG_STEP}` = 'generative' "
                                            "AND metrics.enabled = 1 AND attributes.status = 'FINISHED'")
    runs = [r for r in runs if ds is None or r.data.tags.get(TAG_DS, "") <= ds]
    if not runs:
        when = "" if ds is None else f" on or before {ds}"
        raise FactoryError(f"No generative model logged to MLflow ({cfg.mlflow_tracking_uri}){when}; "
                           "set generative.enabled = true and run `factory run --ds D --step generative`.")
    newest = max(runs, key=lambda r: (r.data.tags[TAG_DS], r.info.start_time))
    target = cfg.state_dir / "generative" / "mlflow" / newest.info.run_id
    if not (target / MODEL_ARTIFACT / "meta.json").is_file():
        mlflow.artifacts.download_artifacts(run_id=newest.info.run_id, artifact_path=MODEL_ARTIFACT, dst_path=str(target))
    return target / MODEL_ARTIFACT


def serving_model_folder(cfg: FactoryConfig, ds: str | None, source: str = "auto") -> Path:
    """Where `factory recommend` loads the model from: this host's state folder ("local"), the
    generative run's MLflow artifact ("mlflow"), or the local one when present, else MLflow ("auto")."""
    if source not in MODEL_SOURCES:
        raise FactoryError(f"model source must be one of {', '.join(MODEL_SOURCES)}; got {source!r}.")
    if source == "mlflow":
        return logged_model_folder(cfg, ds)
    try:
        return latest_model_folder(cfg, ds)
    except FactoryError:
        if source == "local":
            raise
        return logged_model_folder(cfg, ds)


def new_model(cfg: FactoryConfig, vocab: SidVocabulary, user_dim: int) -> GenerativeRecommender:
    """A tiny Llama from scratch, or generative.model_dir's pretrained LM with the vocabulary added."""
    g = cfg.generative
    if g.model_dir:
        if not Path(g.model_dir).is_dir():
            raise FactoryError(f"generative.model_dir {g.model_dir} is not a directory; point it at a from_pretrained folder.")
        lm, vocab = pretrained_lm(g.model_dir, vocab)
    else:
        lm = tiny_llama(vocab, TinyLlamaConfig(hidden=g.hidden, layers=g.layers, heads=g.heads,
                                               intermediate=4 * g.hidden), g.seed)
    return GenerativeRecommender(lm, vocab, user_dim, history_bias=g.history_bias)


def trie_of(day: DayData, vocab: SidVocabulary) -> TrieTables:
    return TrieTables(day.lookup.tokens, vocab.level_sizes)
