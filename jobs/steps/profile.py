"""Step `profile` (Spark): a readable, editable taste profile per user of the day.

For every user of ds's user_sequences, one taste_profiles row:
- facets: from the plays of the user's window (user_sequences joined with the catalog), the share of
  plays per genre, artist, show (the top profile.top_facets of each) and item type (music/podcasts);
  "lately more G" when G's share of the newest profile.recent_events events beats its share of the
  window by profile.lately_margin;
- regions: the profile.regions catalog regions nearest to the user's vector of ds, a region being the
  items sharing a first semantic-ID token (their vectors' normalised mean), named after its top genres;
- edits: the user's profile edits in force on ds (jobs/steps/profile_edits.py), and for users with
  more/less edits the steered vector (jobs/steps/taste_feedback.py) beside user_embeddings' raw one;
- text: all of that as one sentence a person reads ("Mostly jazz (45%), techno (30%); lately more
  true crime; favourite artists: ...").
Per-user rows move only on Spark (executors write the files, the driver commits); the catalog,
regions and edits are small tables read in the driver.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.config import FactoryConfig, ProfileConfig
from jobs.days import parse_ds
from jobs.errors import FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.spark import read_snapshot, spark_session, write_partition
from jobs.lakehouse.tables import (
    ITEM_EMBEDDINGS,
    ITEM_TOKENS,
    ITEM_VOCAB,
    ITEMS,
    PROFILE_EDITS,
    TASTE_PROFILES,
    USER_EMBEDDINGS,
    USER_SEQUENCES,
)
from jobs.steps import profile_edits, taste_feedback
from jobs.steps.features import EVENT_TYPE_CODES
from jobs.tracking.runs import StepResult, track_step

FACETS_TYPE = "array<struct<kind:string,name:string,weight:double>>"
KIND_ORDER = ("genre", "artist", "show", "item_type")
ITEM_TYPE_NAMES = {"track": "music", "episode": "podcasts"}
REGIONS_SCHEMA = pa.schema([("prefix", pa.string()), ("label", pa.string()), ("centroid", pa.list_(pa.float32()))])
EDIT_TEXT_SCHEMA = pa.schema([("user_id", pa.string()), ("edits", pa.list_(pa.string()))])


def history_facets(sequences: DataFrame, catalog: DataFrame, p: ProfileConfig) -> DataFrame:
    """user_id, facets (kind, name, weight: share of the window's plays), lately (a genre or null).

    sequences: user_sequences rows; catalog: item_idx, genre, artist, show, item_type."""
    events = sequences.select("user_id", F.size("item_idx").alias("n"),
                              F.posexplode(F.arrays_zip("item_idx", "event_type")).alias("pos", "e"))
    plays = events.where(F.col("e.event_type") == EVENT_TYPE_CODES["play"]).select(
        "user_id", F.col("e.item_idx").alias("item_idx"),
        (F.col("pos") >= F.col("n") - p.recent_events).cast("int").alias("recent"))
    joined = plays.join(F.broadcast(catalog), "item_idx")
    item_type = F.coalesce(F.create_map(*[F.lit(x) for kv in ITEM_TYPE_NAMES.items() for x in kv])[F.col("item_type")],
                           F.col("item_type"))
    names = {"genre": F.col("genre"), "artist": F.col("artist"), "show": F.col("show"), "item_type": item_type}
    long = joined.select("user_id", "recent", F.explode(F.array(*[
        F.struct(F.lit(order).alias("kind_order"), F.lit(kind).alias("kind"), names[kind].alias("name"))
        for order, kind in enumerate(KIND_ORDER)])).alias("f")).select("user_id", "recent", "f.*")
    totals = joined.groupBy("user_id").agg(F.count("*").alias("plays"), F.sum("recent").alias("recent_plays"))
    shares = (long.where(F.col("name").isNotNull())
              .groupBy("user_id", "kind_order", "kind", "name").agg(F.count("*").alias("n"), F.sum("recent").alias("r"))
              .join(totals, "user_id")
              .select("user_id", "kind_order", "kind", "name", (F.col("n") / F.col("plays")).alias("weight"),
                      F.when(F.col("recent_plays") > 0, F.col("r") / F.col("recent_plays")).otherwise(0.0).alias("recent_share")))
    rank = F.row_number().over(Window.partitionBy("user_id", "kind").orderBy(F.desc("weight"), "name"))
    kept = shares.withColumn("rank", rank).where((F.col("rank") <= p.top_facets) | (F.col("kind") == "item_type"))
    facets = kept.groupBy("user_id").agg(F.sort_array(F.collect_list(
        F.struct("kind_order", "rank", "kind", "name", "weight"))).alias("f")).select(
        "user_id", F.transform("f", lambda x: F.struct(x["kind"].alias("kind"), x["name"].alias("name"),
                                                       x["weight"].alias("weight"))).alias("facets"))
    rise = F.col("recent_share") - F.col("weight")
    lately = (shares.where((F.col("kind") == "genre") & (rise >= p.lately_margin))
              .groupBy("user_id").agg(F.max_by("name", F.struct(rise, F.col("name"))).alias("lately")))
    return facets.join(lately, "user_id", "left")


def steering_plays(sequences: DataFrame, catalog: DataFrame, users: list[str]) -> pa.Table:
    """user_id, item_id, genre, artist, show of every play in the windows of `users` (the users with
    more/less edits: as few as the edits table is small, so their rows may reach the driver)."""
    if not users:
        return pa.table({c: pa.array([], pa.string()) for c in ("user_id", "item_id", "genre", "artist", "show")})
    chosen = sequences.sparkSession.createDataFrame([(u,) for u in users], "user_id string")
    events = sequences.join(F.broadcast(chosen), "user_id").select(
        "user_id", F.explode(F.arrays_zip("item_idx", "event_type")).alias("e"))
    plays = events.where(F.col("e.event_type") == EVENT_TYPE_CODES["play"]).select(
        "user_id", F.col("e.item_idx").alias("item_idx"))
    # Driver-side collection, fine only because it is small: the plays of the users with more/less edits
    # (at most max_seq_len rows each, and edits are few), never every user's rows.
    return plays.join(F.broadcast(catalog), "item_idx").select("user_id", "item_id", "genre", "artist", "show").toArrow()


def catalog_regions(items: pa.Table, tokens: pa.Table, vectors: pa.Table) -> pa.Table:
    """One row per first semantic-ID token: prefix, label (its top genres), centroid (the normalised
    mean of its items' vectors). items: item_id, genre; tokens: item_id, tokens; vectors: item_id, embedding."""
    if tokens.num_rows == 0 or vectors.num_rows == 0:
        return REGIONS_SCHEMA.empty_table()
    vector_of = dict(zip(vectors.column("item_id").to_pylist(), vectors.column("embedding").to_pylist()))
    genre_of = dict(zip(items.column("item_id").to_pylist(), items.column("genre").to_pylist()))
    members: dict[int, list[str]] = {}
    for item, codes in zip(tokens.column("item_id").to_pylist(), tokens.column("tokens").to_pylist()):
        members.setdefault(int(codes[0]), []).append(item)
    rows = []
    for prefix, region in sorted(members.items()):
        with_vectors = [vector_of[i] for i in region if i in vector_of]
        if not with_vectors:
            continue
        genres: dict[str, int] = {}
        for item in region:
            genres[genre_of.get(item) or "?"] = genres.get(genre_of.get(item) or "?", 0) + 1
        ranked = sorted(genres.items(), key=lambda kv: (-kv[1], kv[0]))
        label = " + ".join(g for j, (g, n) in enumerate(ranked[:2]) if j == 0 or n >= 0.25 * len(region))
        centroid = taste_feedback.unit(np.asarray(with_vectors, np.float64).mean(axis=0)).astype(np.float32)
        rows.append({"prefix": str(prefix), "label": label, "centroid": centroid.tolist()})
    return pa.Table.from_pylist(rows, REGIONS_SCHEMA)


def nearest_regions(users: DataFrame, regions: DataFrame, k: int) -> DataFrame:
    """user_id, regions: the k regions with the highest cosine to the user's vector (Spark; regions is
    small and broadcast, so the work is linear in users)."""
    dot = F.aggregate(F.zip_with("embedding", "centroid", lambda a, b: a.cast("double") * b.cast("double")),
                      F.lit(0.0).cast("double"), lambda acc, x: acc + x)
    scored = users.select("user_id", "embedding").crossJoin(F.broadcast(regions)).select(
        "user_id", "prefix", "label", dot.alias("cosine"))
    rank = F.row_number().over(Window.partitionBy("user_id").orderBy(F.desc("cosine"), "prefix"))
    top = scored.withColumn("rank", rank).where(F.col("rank") <= k)
    return top.groupBy("user_id").agg(F.sort_array(F.collect_list(F.struct(
        "rank", F.lit("sid_prefix").alias("kind"), F.concat("prefix", F.lit(": "), "label").alias("name"),
        F.col("cosine").alias("weight")))).alias("r")).select(
        "user_id", F.transform("r", lambda x: F.struct(x["kind"].alias("kind"), x["name"].alias("name"),
                                                       x["weight"].alias("weight"))).alias("regions"))


def _listed(kind: str, with_share: bool = False) -> Column:
    """The names of the facets of `kind` joined by commas (with their share in %), null if none."""
    chosen = F.filter("facets", lambda f: f["kind"] == kind)
    shown = F.transform(chosen, lambda f: F.concat(
        f["name"], F.lit(" ("), F.round(f["weight"] * 100).cast("int").cast("string"), F.lit("%)"))
    ) if with_share else F.transform(chosen, lambda f: f["name"])
    return F.when(F.size(chosen) > 0, F.array_join(shown, ", "))


def profile_text() -> Column:
    """The sentence a person reads, from the columns facets, lately, regions, edits."""
    parts = [
        F.coalesce(F.concat(F.lit("Mostly "), _listed("genre", True)), F.lit("No plays in the window yet")),
        F.when(F.col("lately").isNotNull(), F.concat(F.lit("lately more "), F.col("lately"))),
        F.concat(F.lit("favourite artists: "), _listed("artist")),
        F.concat(F.lit("shows: "), _listed("show")),
        _listed("item_type", True),
        F.when(F.size("regions") > 0, F.concat(F.lit("nearest catalog regions: "),
                                               F.array_join(F.transform("regions", lambda r: r["name"]), ", "))),
        F.when(F.size("edits") > 0, F.concat(F.lit("your edits: "), F.array_join("edits", ", "))),
    ]
    return F.concat(F.concat_ws("; ", *parts), F.lit("."))


def build_profiles(cfg: FactoryConfig, ds: str, sequences: DataFrame, embeddings: DataFrame, step) -> DataFrame:
    """TASTE_PROFILES rows of ds (Spark) from the day's sequences and raw user vectors."""
    spark = spark_session(cfg)
    _, items = read_snapshot(cfg, ITEMS)
    vocab_version, vocab = read_snapshot(cfg, ITEM_VOCAB)
    step.read(ITEM_VOCAB, vocab_version)
    catalog = vocab.join(items, "item_id").select("item_idx", "item_id", "genre", "artist", "show", "item_type")
    facets = history_facets(sequences, catalog, cfg.profile)

    small_items = delta.read(cfg, ITEMS, columns=["item_id", "genre"])
    tokens = delta.read(cfg, ITEM_TOKENS, columns=["codebook_version", "item_id", "tokens"])
    if tokens.num_rows:
        tokens = tokens.filter(pc.equal(tokens.column("codebook_version"), pc.max(tokens.column("codebook_version"))))
    step.read(ITEM_TOKENS, delta.current_version(cfg, ITEM_TOKENS))
    item_vectors = delta.read(cfg, ITEM_EMBEDDINGS, where={"ds": ds}, columns=["item_id", "embedding"])
    step.read(ITEM_EMBEDDINGS, delta.current_version(cfg, ITEM_EMBEDDINGS))
    regions = catalog_regions(small_items, tokens, item_vectors)
    step.metrics(catalog_regions=regions.num_rows)
    if regions.num_rows and cfg.profile.regions:
        nearest = nearest_regions(embeddings, spark.createDataFrame(regions), cfg.profile.regions)
    else:
        nearest = spark.createDataFrame([], "user_id string, regions " + FACETS_TYPE)

    edits = profile_edits.edits_in_force(cfg, ds)  # a small table: the edit rows stay in the driver
    step.read(PROFILE_EDITS, delta.current_version(cfg, PROFILE_EDITS))
    texts: dict[str, list[str]] = {}
    for edit in edits.to_pylist():
        texts.setdefault(edit["user_id"], []).append(profile_edits.describe(edit))
    steering_users = taste_feedback.steering_users(edits) if cfg.profile.personal_weight else []
    moves = taste_feedback.moves_on(cfg, ds, edits, steering_plays(sequences, catalog, steering_users))
    step.metrics(edits_in_force=edits.num_rows, users_with_edits=len(texts), users_steered=len(moves))
    edit_rows = spark.createDataFrame(pa.table({"user_id": list(texts), "edits": list(texts.values())},
                                               schema=EDIT_TEXT_SCHEMA))
    steer_rows = spark.createDataFrame(taste_feedback.steer_table(moves))

    empty = F.array().cast(FACETS_TYPE)
    joined = (sequences.select("user_id").join(facets, "user_id", "left").join(nearest, "user_id", "left")
              .join(F.broadcast(edit_rows), "user_id", "left").join(embeddings, "user_id", "left")
              .join(F.broadcast(steer_rows), "user_id", "left")
              .select("user_id", F.coalesce("facets", empty).alias("facets"), "lately",
                      F.coalesce("regions", empty).alias("regions"),
                      F.coalesce("edits", F.array().cast("array<string>")).alias("edits"),
                      taste_feedback.steered_vector("embedding", "steer").alias("steered_embedding"), "model_version"))
    return joined.select("user_id", profile_text().alias("text"), "facets", "regions", "edits", "steered_embedding",
                         "model_version", F.lit(ds).alias("ds"))


def run(ds: str, cfg: FactoryConfig, run_key: str | None = None) -> StepResult:
    parse_ds(ds)
    with track_step(cfg, ds, "profile", run_key) as step:
        step.params(apply_edits=cfg.profile.apply_edits, steer_strength=cfg.profile.steer_strength,
                    personal_weight=cfg.profile.personal_weight,
                    top_facets=cfg.profile.top_facets, regions=cfg.profile.regions)
        profile_edits.ensure_table(cfg)
        sequences_version, sequences = read_snapshot(cfg, USER_SEQUENCES, {"ds": [ds]})
        embeddings_version, embeddings = read_snapshot(cfg, USER_EMBEDDINGS, {"ds": [ds]})
        step.read(USER_SEQUENCES, sequences_version)
        step.read(USER_EMBEDDINGS, embeddings_version)
        if not delta.snapshot_files(cfg, USER_SEQUENCES, {"ds": [ds]}, sequences_version)[1]:
            raise FactoryError(f"ds={ds}: user_sequences has no rows for this day; run the features step first.")
        profiles = build_profiles(cfg, ds, sequences, embeddings.select("user_id", "embedding", "model_version"), step)
        shuffle = cfg.spark.shuffle_partitions
        version = write_partition(cfg, profiles.repartition(shuffle, "user_id").sortWithinPartitions("user_id"),
                                  TASTE_PROFILES, {"ds": ds})
        step.wrote(TASTE_PROFILES, version)
        # Measured on the committed files, on the executors: one row of aggregates reaches the driver.
        _, written = read_snapshot(cfg, TASTE_PROFILES, {"ds": [ds]}, version)
        steered = written.where(F.col("steered_embedding").isNotNull()).join(embeddings.select("user_id", "embedding"),
                                                                            "user_id")
        cosine = F.aggregate(F.zip_with("steered_embedding", "embedding", lambda a, b: a.cast("double") * b.cast("double")),
                             F.lit(0.0).cast("double"), lambda acc, x: acc + x)
        users, facets, without_plays = written.agg(
            F.count("*"), F.avg(F.size("facets")), F.sum((F.size("facets") == 0).cast("int"))).first()
        min_cosine = steered.agg(F.min(cosine)).first()[0]
        step.metrics(users=users, mean_facets=float(facets or 0.0), users_without_plays=int(without_plays or 0),
                     **({"min_steered_cosine": float(min_cosine)} if min_cosine is not None else {}))
        return step.result
