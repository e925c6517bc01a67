"""People's edits of their taste profile: the profile_edits table and the Python API behind `factory profile edit`.

An edit is one standing instruction per user and facet (kind genre, artist, show or item; the name
as the catalog spells it): "more", "less" or "forget". It is in force on every ds from its from_ds
(default: the day after the latest built user_sequences, i.e. the next daily run) until it is
withdrawn (withdrawn_from_ds). Recording the same edit again changes nothing; a different action on
the same facet replaces the earlier one (the table keeps the latest instruction; Delta's history
keeps the earlier ones). What an edit does in the next run is jobs/steps/taste_feedback.py's.

Pure pyarrow and delta-rs (profile_edits and items are small tables): the CLI imports this module.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from jobs.config import FactoryConfig
from jobs.days import parse_ds, shift
from jobs.errors import FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.tables import ITEMS, PROFILE_EDITS, USER_SEQUENCES

KINDS = ("genre", "artist", "show", "item")  # an item is named by its id (trk_000123)
ACTIONS = ("more", "less", "forget")
ITEM_COLUMN = {"genre": "genre", "artist": "artist", "show": "show", "item": "item_id"}  # the items column of a kind


def parse_facet(text: str) -> tuple[str, str]:
    """'genre:jazz' -> ('genre', 'jazz'); one sentence naming the kinds if it is not KIND:NAME."""
    kind, sep, name = text.partition(":")
    kind, name = kind.strip().lower(), name.strip()
    if not sep or not name:
        raise FactoryError(f"{text!r} is not KIND:NAME; write e.g. genre:jazz (kinds: {', '.join(KINDS)}).")
    if kind not in KINDS:
        raise FactoryError(f"Unknown kind {kind!r} in {text!r}; kinds are {', '.join(KINDS)}.")
    return kind, name


def catalog_names(cfg: FactoryConfig, kind: str) -> list[str]:
    """Every name of `kind` in the catalog (distinct, sorted)."""
    column = ITEM_COLUMN[kind]
    values = delta.read(cfg, ITEMS, columns=[column]).column(column)
    return sorted(v for v in pc.unique(values).to_pylist() if v)


def resolve_name(kind: str, name: str, names: Iterable[str]) -> str:
    """The catalog's spelling of `name` (exact, else case-insensitive); otherwise one sentence with the
    closest names (difflib's, then names containing it)."""
    names = list(names)
    if name in names:
        return name
    by_lower = {n.lower(): n for n in names}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    similar = difflib.get_close_matches(name.lower(), list(by_lower), n=5, cutoff=0.6)
    containing = [n for n in sorted(by_lower) if name.lower() in n and n not in similar]
    close = [by_lower[n] for n in (similar + containing)[:5]]
    hint = f"close matches: {', '.join(close)}" if close else f"no close match among {len(names)} {kind} names"
    raise FactoryError(f"No {kind} named {name!r} in the catalog; {hint}.")


def next_run_ds(cfg: FactoryConfig) -> str:
    """The ds of the next daily run: the day after the latest user_sequences partition."""
    table = delta.open_table(cfg, USER_SEQUENCES)
    days = [dict(p)["ds"] for p in table.partitions()] if table is not None else []
    if not days:
        raise FactoryError("No day has been built yet (user_sequences is empty); run a day first or pass from_ds.")
    return shift(max(days), 1)


def ensure_table(cfg: FactoryConfig) -> int:
    """Create the (empty) edits table if nobody has edited yet, so that readers always find it; its version."""
    version = delta.current_version(cfg, PROFILE_EDITS)
    return version if version is not None else delta.upsert(cfg, PROFILE_EDITS, PROFILE_EDITS.schema.empty_table())[0]


def read_edits(cfg: FactoryConfig, user_id: str | None = None) -> pa.Table:
    """Every edit row (of one user if given), sorted by user, kind, name."""
    edits = delta.read(cfg, PROFILE_EDITS, where={"user_id": user_id} if user_id else None)
    return edits.sort_by([("user_id", "ascending"), ("kind", "ascending"), ("name", "ascending")])


def in_force(edits: pa.Table, ds: str) -> pa.Table:
    """The edit rows in force on ds: from_ds <= ds and not withdrawn on or before ds."""
    started = pc.less_equal(edits.column("from_ds"), ds)
    withdrawn = pc.fill_null(pc.less_equal(edits.column("withdrawn_from_ds"), ds), False)
    return edits.filter(pc.and_(started, pc.invert(withdrawn)))


def edits_in_force(cfg: FactoryConfig, ds: str) -> pa.Table:
    """Every edit in force on ds (empty when profile.apply_edits is off: recorded edits then change nothing)."""
    if not cfg.profile.apply_edits:
        return PROFILE_EDITS.schema.empty_table()
    return in_force(read_edits(cfg), ds)


def record_edit(cfg: FactoryConfig, user_id: str, action: str, kind: str, name: str, from_ds: str | None = None,
                source: str = "api", now: dt.datetime | None = None) -> bool:
    """Record "more"/"less"/"forget" of a facet for a user, in force from from_ds (default: the next run).

    `name` is matched against the catalog (case-insensitive); an unknown name raises FactoryError with
    the closest ones. Returns False when the same edit was already in force (nothing changed)."""
    if action not in ACTIONS:
        raise FactoryError(f"Unknown edit {action!r}; edits are {', '.join(ACTIONS)}.")
    if kind not in KINDS:
        raise FactoryError(f"Unknown kind {kind!r}; kinds are {', '.join(KINDS)}.")
    name = resolve_name(kind, name, catalog_names(cfg, kind))
    from_ds = from_ds or next_run_ds(cfg)
    parse_ds(from_ds)
    row = {"user_id": user_id, "kind": kind, "name": name, "action": action, "from_ds": from_ds,
           "withdrawn_from_ds": None, "edited_at": now or dt.datetime.now(dt.UTC), "withdrawn_at": None, "source": source}
    # Update a stored row only if this edit differs from it (another action, another start, or withdrawn):
    # repeating an edit is a no-op, not a new version of the row.
    _, metrics = delta.upsert(cfg, PROFILE_EDITS, pa.Table.from_pylist([row], PROFILE_EDITS.schema),
                              update_when="t.action <> s.action OR t.from_ds <> s.from_ds OR t.withdrawn_from_ds IS NOT NULL")
    return bool(metrics.get("num_target_rows_inserted", 0) or metrics.get("num_target_rows_updated", 0))


def withdraw_edit(cfg: FactoryConfig, user_id: str, kind: str, name: str, from_ds: str | None = None,
                  now: dt.datetime | None = None) -> bool:
    """Withdraw the user's edit of a facet from from_ds on (default: the next run). FactoryError if the
    user has no such edit; False if it was withdrawn already."""
    edits = read_edits(cfg, user_id)
    match = [r for r in edits.to_pylist() if r["kind"] == kind and r["name"].lower() == name.lower()]
    if not match:
        standing = ", ".join(f"{r['action']} {r['kind']}:{r['name']}" for r in edits.to_pylist()) or "none"
        raise FactoryError(f"User {user_id!r} has no edit of {kind}:{name} to withdraw; their edits: {standing}.")
    row = match[0]
    if row["withdrawn_from_ds"] is not None:
        return False
    from_ds = from_ds or next_run_ds(cfg)
    parse_ds(from_ds)
    row.update(withdrawn_from_ds=max(from_ds, row["from_ds"]), withdrawn_at=now or dt.datetime.now(dt.UTC))
    delta.upsert(cfg, PROFILE_EDITS, pa.Table.from_pylist([row], PROFILE_EDITS.schema),
                 update_when="t.withdrawn_from_ds IS NULL")
    return True


def describe(edit: dict) -> str:
    """'more genre:jazz' (as a person typed it)."""
    return f"{edit['action']} {edit['kind']}:{edit['name']}"
