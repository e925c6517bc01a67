"""What profile edits do in the next daily run: "forget" drops events, "more"/"less" steer vectors.

- forget KIND:NAME: the named items' events leave the user's window, hence the user's embedding,
  profile and generative examples; recommendations drop the items (jobs/serving). Step features
  drops the forgotten (user, item) pairs from every event it reads, so its increment stays equal to
  the full recompute; on the day an edit starts or is withdrawn, that user's sequence is rebuilt from
  the window (yesterday's still holds the forgotten items, or lacks the returned ones). Turning
  profile.apply_edits off does not bring events back by itself: run a full rebuild day.
- more / less KIND:NAME: a facet's catalog direction is the normalised mean of its items' vectors
  (the encoder's shared space, item_embeddings of ds); its personal direction for a user is the
  normalised mean of the vectors of the facet's items among the user's plays in the window ("more
  jazz" = more of the jazz this user plays). The direction of an edit is unit((1 - p) * catalog + p *
  personal), p = profile.personal_weight (the catalog direction alone when the user played none of
  the facet). A user's move is w = s * unit(sum of "more" directions - sum of "less" directions),
  s = profile.steer_strength < 1; the steered vector is
  unit(v + w), published in taste_profiles.steered_embedding beside user_embeddings' raw v (kept
  unchanged). Since |w| = s and |v| = 1, the angle between v and the steered vector is at most asin(s).

Edit rows and facet directions are small (profile_edits and item_embeddings are small tables) and
stay in the driver; per-user rows move only on Spark.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.config import FactoryConfig
from jobs.lakehouse import delta
from jobs.lakehouse.tables import ITEM_EMBEDDINGS, ITEMS, PROFILE_EDITS
from jobs.steps.profile_edits import ITEM_COLUMN, edits_in_force, read_edits

STEER_SCHEMA = pa.schema([("user_id", pa.string()), ("steer", pa.list_(pa.float32()))])
FORGOTTEN_SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string())])


# --- forget ---------------------------------------------------------------------------------------

def forgotten_items(edits: pa.Table, items: pa.Table) -> pa.Table:
    """(user_id, item_id) of every item a forget edit of `edits` names: the item itself, or every item
    of the named genre, artist or show. `items` holds item_id, genre, artist, show."""
    rows = []
    for kind, column in ITEM_COLUMN.items():
        mask = pc.and_(pc.equal(edits.column("action"), "forget"), pc.equal(edits.column("kind"), kind))
        chosen = edits.filter(mask).select(["user_id", "name"])
        if chosen.num_rows:
            catalog = pa.table({"item_id": items.column("item_id"), "name": items.column(column)})
            rows.append(chosen.join(catalog, "name").select(["user_id", "item_id"]))
    if not rows:
        return FORGOTTEN_SCHEMA.empty_table()
    return pa.concat_tables(rows).group_by(["user_id", "item_id"]).aggregate([]).sort_by(
        [("user_id", "ascending"), ("item_id", "ascending")]).cast(FORGOTTEN_SCHEMA)


def forgotten_on(cfg: FactoryConfig, ds: str) -> pa.Table:
    """(user_id, item_id) forgotten on ds (empty when profile.apply_edits is off)."""
    return forgotten_items(edits_in_force(cfg, ds), delta.read(cfg, ITEMS, columns=["item_id", "genre", "artist", "show"]))


def any_edits(cfg: FactoryConfig) -> bool:
    """Whether edits apply at all: profile.apply_edits is on and the edits table exists."""
    return cfg.profile.apply_edits and delta.current_version(cfg, PROFILE_EDITS) is not None


def users_to_rebuild(cfg: FactoryConfig, ds: str) -> list[str]:
    """Users whose sequence features rebuilds from the window on ds: those with an edit starting or
    withdrawn on ds (of any action: "forget" replaced by "more" changes the forgotten items too)."""
    if not any_edits(cfg):
        return []
    edits = read_edits(cfg)
    changed = pc.or_(pc.equal(edits.column("from_ds"), ds), pc.fill_null(pc.equal(edits.column("withdrawn_from_ds"), ds), False))
    return sorted(set(edits.filter(changed).column("user_id").to_pylist()))


def without_forgotten(spark: SparkSession, events: DataFrame, forgotten: pa.Table) -> DataFrame:
    """`events` (user_id, item_id, ...) less the forgotten (user_id, item_id) pairs (Spark)."""
    if forgotten.num_rows == 0:
        return events
    return events.join(F.broadcast(spark.createDataFrame(forgotten)), ["user_id", "item_id"], "left_anti")


# --- more / less ----------------------------------------------------------------------------------

def unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def facet_directions(facets: list[tuple[str, str]], items: pa.Table, item_vectors: pa.Table) -> dict[tuple[str, str], np.ndarray]:
    """{(kind, name): unit mean of the facet's item vectors} for the facets with at least one vector.

    items: item_id, genre, artist, show; item_vectors: item_id, embedding (item_embeddings of a day)."""
    if not facets or item_vectors.num_rows == 0:
        return {}
    matrix = np.stack([np.asarray(v, np.float32) for v in item_vectors.column("embedding").to_pylist()])
    row_of = {item: i for i, item in enumerate(item_vectors.column("item_id").to_pylist())}
    columns = {c: items.column(c).to_pylist() for c in ("item_id", "genre", "artist", "show")}
    out = {}
    for kind, name in facets:
        values = columns[ITEM_COLUMN[kind]]
        rows = [row_of[item] for item, value in zip(columns["item_id"], values) if value == name and item in row_of]
        if rows:
            out[(kind, name)] = unit(matrix[rows].mean(axis=0)).astype(np.float32)
    return out


def personal_directions(edits: pa.Table, plays: pa.Table, item_vectors: pa.Table) -> dict[tuple[str, str, str], np.ndarray]:
    """{(user_id, kind, name): unit mean of the vectors of the facet's items among the user's plays}
    for the more/less edits whose user played at least one item of the facet that has a vector.

    plays: user_id, item_id, genre, artist, show (one row per play of the edited users' windows)."""
    steering = steering_edits(edits).to_pylist()
    if not steering or plays.num_rows == 0 or item_vectors.num_rows == 0:
        return {}
    vector_of = dict(zip(item_vectors.column("item_id").to_pylist(), item_vectors.column("embedding").to_pylist()))
    by_user: dict[str, list[dict]] = {}
    for play in plays.to_pylist():
        by_user.setdefault(play["user_id"], []).append(play)
    out = {}
    for edit in steering:
        column = ITEM_COLUMN[edit["kind"]]
        vectors = [vector_of[p["item_id"]] for p in by_user.get(edit["user_id"], [])
                   if p[column] == edit["name"] and p["item_id"] in vector_of]
        if vectors:
            mean = np.asarray(vectors, np.float64).mean(axis=0)
            out[(edit["user_id"], edit["kind"], edit["name"])] = unit(mean).astype(np.float32)
    return out


def edit_direction(catalog: np.ndarray | None, personal: np.ndarray | None, personal_weight: float) -> np.ndarray | None:
    """unit((1 - p) * catalog + p * personal); the catalog direction alone without a personal one."""
    if personal is None or personal_weight == 0.0:
        return catalog
    if catalog is None:
        return personal
    blended = unit((1.0 - personal_weight) * catalog.astype(np.float64) + personal_weight * personal.astype(np.float64))
    return blended.astype(np.float32) if np.linalg.norm(blended) > 0 else catalog


def steer_moves(edits: pa.Table, directions: dict[tuple[str, str], np.ndarray], strength: float,
                personal: dict[tuple[str, str, str], np.ndarray] | None = None,
                personal_weight: float = 0.0) -> dict[str, np.ndarray]:
    """{user_id: w} for users whose more/less edits have directions: w = strength * unit(sum more - sum less),
    each edit's direction blending the facet's catalog direction with the user's personal one."""
    sums: dict[str, np.ndarray] = {}
    personal = personal or {}
    for edit in edits.to_pylist():
        sign = {"more": 1.0, "less": -1.0}.get(edit["action"])
        direction = edit_direction(directions.get((edit["kind"], edit["name"])),
                                   personal.get((edit["user_id"], edit["kind"], edit["name"])), personal_weight)
        if sign is None or direction is None:
            continue
        sums[edit["user_id"]] = sums.get(edit["user_id"], 0.0) + sign * direction
    return {user: (strength * unit(total)).astype(np.float32) for user, total in sorted(sums.items())
            if np.linalg.norm(total) > 1e-6}


def steer(vectors: np.ndarray, moves: np.ndarray) -> np.ndarray:
    """(N, D) unit vectors moved by (N, D) moves and renormalised: the reference of `steered_vector`."""
    return unit(vectors.astype(np.float64) + moves.astype(np.float64)).astype(np.float32)


def steer_table(moves: dict[str, np.ndarray]) -> pa.Table:
    users = list(moves)
    return pa.table({"user_id": users, "steer": [moves[u].tolist() for u in users]}, schema=STEER_SCHEMA)


def steered_vector(vector: str, move: str) -> Column:
    """Spark: unit(vector + move) as array<float>, null where move is null (the same as `steer`)."""
    total = F.zip_with(vector, move, lambda a, b: a.cast("double") + b.cast("double"))
    norm = F.sqrt(F.aggregate(total, F.lit(0.0).cast("double"), lambda acc, x: acc + x * x))
    return F.when(F.col(move).isNull(), F.lit(None)).otherwise(
        F.transform(total, lambda x: (x / norm).cast("float")))


def steering_edits(edits: pa.Table) -> pa.Table:
    """The more/less rows of `edits`."""
    return edits.filter(pc.is_in(edits.column("action"), pa.array(["more", "less"])))


def facets_of(edits: pa.Table) -> list[tuple[str, str]]:
    """The distinct (kind, name) of the more/less edits."""
    return sorted({(r["kind"], r["name"]) for r in steering_edits(edits).select(["kind", "name"]).to_pylist()})


def steering_users(edits: pa.Table) -> list[str]:
    """The users with more/less edits."""
    return sorted(set(steering_edits(edits).column("user_id").to_pylist()))


def moves_on(cfg: FactoryConfig, ds: str, edits: pa.Table, plays: pa.Table | None = None) -> dict[str, np.ndarray]:
    """{user_id: w} for ds's more/less edits against ds's item vectors; plays: the steering users'
    plays (personal_directions), none = catalog directions only."""
    facets = facets_of(edits)
    if not facets:
        return {}
    items = delta.read(cfg, ITEMS, columns=["item_id", "genre", "artist", "show"])
    vectors = delta.read(cfg, ITEM_EMBEDDINGS, where={"ds": ds}, columns=["item_id", "embedding"])
    personal = personal_directions(edits, plays, vectors) if plays is not None and cfg.profile.personal_weight else {}
    return steer_moves(edits, facet_directions(facets, items, vectors), cfg.profile.steer_strength,
                       personal, cfg.profile.personal_weight)
