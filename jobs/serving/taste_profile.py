"""A user's taste profile as `factory profile show` prints it, and what edits change in recommendations.

Reads taste_profiles (built by step profile) and profile_edits; edits themselves are recorded by
jobs/steps/profile_edits.py (`record_edit`, `withdraw_edit`). Recommendations (`factory neighbours`,
`factory recommend`) use `serving_vector` (the steered vector where more/less edits are in force) and
drop `forgotten_item_ids`.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from jobs.config import FactoryConfig
from jobs.errors import FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.tables import ITEMS, PROFILE_EDITS, TASTE_PROFILES, USER_EMBEDDINGS, USER_SEQUENCES
from jobs.steps import profile_edits
from jobs.steps.taste_feedback import forgotten_items


def profile_days(cfg: FactoryConfig) -> list[str]:
    table = delta.open_table(cfg, TASTE_PROFILES)
    return sorted(dict(p)["ds"] for p in table.partitions()) if table is not None else []


def check_user(cfg: FactoryConfig, user_id: str) -> str:
    """The latest day on which the user has a taste profile (or, before any profile, a sequence);
    FactoryError naming the user otherwise."""
    days = profile_days(cfg)
    spec = TASTE_PROFILES if days else USER_SEQUENCES
    if not days:
        table = delta.open_table(cfg, USER_SEQUENCES)
        days = sorted(dict(p)["ds"] for p in table.partitions()) if table is not None else []
    if not days:
        raise FactoryError("No day has been built yet; run a day first (factory run --ds ...).")
    if delta.read(cfg, spec, where={"ds": days[-1], "user_id": user_id}, columns=["user_id"]).num_rows == 0:
        raise FactoryError(f"Unknown user {user_id!r}: no taste profile or listening on {days[-1]}; check the id "
                           f"(users look like u_000001).")
    return days[-1]


def show_profile(cfg: FactoryConfig, user_id: str, ds: str | None = None) -> dict:
    """{user_id, ds, text, facets, regions, edits_in_force, steered, model_version, edits: [every edit
    of the user with its status on ds]}; FactoryError (one sentence) for an unknown user or day."""
    days = profile_days(cfg)
    if not days:
        raise FactoryError("No taste profiles yet; run a day through the profile step first (factory run --ds ...).")
    if ds is not None and ds not in days:
        raise FactoryError(f"No taste profiles for ds={ds}; days with profiles: {days[0]} .. {days[-1]}.")
    ds = ds or days[-1]
    rows = delta.read(cfg, TASTE_PROFILES, where={"ds": ds, "user_id": user_id}).to_pylist()
    if not rows:
        raise FactoryError(f"User {user_id!r} has no taste profile on {ds}: profiles cover the users with plays or "
                           f"skips in the feature window; check the id (e.g. u_000001).")
    row = rows[0]
    edits = []
    for edit in profile_edits.read_edits(cfg, user_id).to_pylist():
        withdrawn = edit["withdrawn_from_ds"]
        status = ("withdrawn" if withdrawn is not None and withdrawn <= ds else
                  "in force" if edit["from_ds"] <= ds else f"from {edit['from_ds']}")
        if withdrawn is not None and withdrawn > ds:
            status = f"withdrawn before {edit['from_ds']}" if withdrawn <= edit["from_ds"] else \
                f"{status}, withdrawn from {withdrawn}"
        edits.append({**edit, "status": status, "edit": profile_edits.describe(edit)})
    return {"user_id": user_id, "ds": ds, "text": row["text"], "facets": row["facets"], "regions": row["regions"],
            "edits_in_force": row["edits"], "steered": row["steered_embedding"] is not None,
            "model_version": row["model_version"], "edits": edits}


def forgotten_item_ids(cfg: FactoryConfig, user_id: str, ds: str) -> set[str]:
    """The items the user's forget edits in force on ds name (none when profile.apply_edits is off)."""
    if delta.current_version(cfg, PROFILE_EDITS) is None:
        return set()
    edits = profile_edits.edits_in_force(cfg, ds)
    edits = edits.filter(pc.equal(edits.column("user_id"), user_id))
    if edits.num_rows == 0:
        return set()
    items = delta.read(cfg, ITEMS, columns=["item_id", "genre", "artist", "show"])
    return set(forgotten_items(edits, items).column("item_id").to_pylist())


def serving_vector(cfg: FactoryConfig, user_id: str, ds: str) -> np.ndarray | None:
    """(D,) the vector recommendations use: the steered one of ds's profile if the user has one (and
    profile.apply_edits is on), else the raw user_embeddings vector; None if the user has neither."""
    if cfg.profile.apply_edits:
        steered = delta.read(cfg, TASTE_PROFILES, where={"ds": ds, "user_id": user_id}, columns=["steered_embedding"])
        if steered.num_rows and steered.column("steered_embedding")[0].is_valid:
            return np.asarray(steered.column("steered_embedding")[0].values.to_numpy(), np.float32)
    raw = delta.read(cfg, USER_EMBEDDINGS, where={"ds": ds, "user_id": user_id}, columns=["embedding"])
    return np.asarray(raw.column("embedding")[0].values.to_numpy(), np.float32) if raw.num_rows else None
