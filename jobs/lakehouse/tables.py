"""The one place that defines every table: name, schema, partitioning, key and the step that owns it.

Steps read and write through `jobs.lakehouse.delta` with these specs; no step builds a table path by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
VECTOR = pa.list_(pa.float32())


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    partition_by: tuple[str, ...]
    owner: str  # the step that writes it
    doc: str
    unique: tuple[str, ...] = ()  # columns that must stay unique besides the key (appends check them too)
    # How the table grows, and so how it is written. "per_user" / "per_event" tables grow with the
    # platform: engines write their files and the driver commits metadata only (jobs.lakehouse.commit);
    # no step collects their rows. "small" tables pass through the driver as Arrow (jobs.lakehouse.delta)
    # while they hold fewer than `small_below` rows (docs/architecture.md, "Which tables are small").
    scale: Literal["per_user", "per_event", "small"] = "small"
    small_below: int | None = None  # the row count at which a "small" table stops being small

    def uri(self, lake_uri: str) -> str:
        """Where the table lives under a lake root (a path or an object-store URI)."""
        return f"{lake_uri.rstrip('/')}/{self.name}"


EVENTS = TableSpec(
    "events",
    pa.schema([
        ("event_id", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()),
        ("item_type", pa.string()), ("event_type", pa.string()), ("ts", TS),
        ("ms_played", pa.int64()), ("ds", pa.string()),
    ]),
    key=("event_id",), partition_by=("ds",), owner="ingest",
    doc="Validated listening events of one day; one row per raw event line that passed every rule.",
    scale="per_event",
)

QUARANTINE = TableSpec(
    "quarantine",
    pa.schema([
        ("source", pa.string()), ("source_file", pa.string()), ("line_number", pa.int64()),
        ("reason", pa.string()), ("detail", pa.string()),
        ("raw", pa.string()), ("raw_bytes", pa.binary()), ("ds", pa.string()),
    ]),
    key=("source_file", "line_number"), partition_by=("ds", "source"), owner="ingest",
    doc="Every raw line that failed validation, byte-exact (raw_bytes), with the first failed rule.",
    scale="per_event",
)

ITEMS = TableSpec(
    "items",
    pa.schema([
        ("item_id", pa.string()), ("item_type", pa.string()), ("title", pa.string()),
        ("description", pa.string()), ("genre", pa.string()), ("artist", pa.string()),
        ("show", pa.string()), ("duration_ms", pa.int64()), ("text", pa.string()),
        ("text_hash", pa.string()), ("first_seen_ds", pa.string()), ("updated_ds", pa.string()),
    ]),
    key=("item_id",), partition_by=(), owner="catalog",
    doc="The catalog of tracks and episodes, upserted by MERGE from each day's catalog drop.",
    scale="small", small_below=2_000_000,
)

ITEM_VOCAB = TableSpec(
    "item_vocab",
    pa.schema([("item_id", pa.string()), ("item_idx", pa.int32()), ("first_seen_ds", pa.string())]),
    key=("item_id",), partition_by=(), owner="features",
    doc="Dense integer id per item (1..N, 0 is padding), append-only: an id is never reassigned.",
    scale="small", small_below=20_000_000,
    unique=("item_idx",),
)

USER_SEQUENCES = TableSpec(
    "user_sequences",
    pa.schema([
        ("user_id", pa.string()), ("item_idx", pa.list_(pa.int32())),
        ("event_type", pa.list_(pa.int8())), ("ts", pa.list_(pa.int64())),
        ("events_in_window", pa.int64()), ("last_ts", TS), ("ds", pa.string()),
    ]),
    key=("user_id",), partition_by=("ds",), owner="features",
    doc="Each user's most recent plays/skips (oldest first) over the rolling window ending at ds.",
    scale="per_user",
)

USER_EMBEDDINGS = TableSpec(
    "user_embeddings",
    pa.schema([("user_id", pa.string()), ("embedding", VECTOR), ("model_version", pa.string()), ("ds", pa.string())]),
    key=("user_id",), partition_by=("ds",), owner="embed",
    doc="L2-normalised user vectors computed from data up to ds.",
    scale="per_user",
)

ITEM_EMBEDDINGS = TableSpec(
    "item_embeddings",
    pa.schema([
        ("item_id", pa.string()), ("item_idx", pa.int32()), ("embedding", VECTOR),
        ("model_version", pa.string()), ("vector_source", pa.string()), ("ds", pa.string()),
    ]),
    key=("item_id",), partition_by=("ds",), owner="embed",
    doc="L2-normalised item vectors in the same space as the users, for every catalogued item from its first "
        "day: vector_source 'encoder' (the encoder's tied output table), 'facets' (an item the encoder has not "
        "trained, from its genre and creator vectors in the encoder's table) or 'content' (an item the encoder "
        "has no row for, mapped from its text vector by a ridge map fitted daily on the items it trained).",
    scale="small", small_below=5_000_000,
)

CONTENT_VECTORS = TableSpec(
    "content_vectors",
    pa.schema([("text_hash", pa.string()), ("vector", VECTOR), ("encoder", pa.string()), ("encoded_ds", pa.string())]),
    key=("text_hash",), partition_by=(), owner="semantic_ids",
    doc="Cache of text-encoder vectors by hash of the item text, so a day encodes only new or edited items.",
    scale="small", small_below=1_000_000,
)

CODEBOOKS = TableSpec(
    "codebooks",
    pa.schema([
        ("codebook_version", pa.int64()), ("level", pa.int32()), ("code", pa.int32()),
        ("centroid", VECTOR), ("built_ds", pa.string()), ("params", pa.string()),
    ]),
    key=("codebook_version", "level", "code"), partition_by=(), owner="semantic_ids",
    doc="Residual k-means centroids per level; a refit appends a new codebook_version.",
    scale="small", small_below=1_000_000,
)

ITEM_TOKENS = TableSpec(
    "item_tokens",
    pa.schema([
        ("codebook_version", pa.int64()), ("item_id", pa.string()), ("tokens", pa.list_(pa.int32())),
        ("sid", pa.string()), ("text_hash", pa.string()), ("assigned_ds", pa.string()),
    ]),
    key=("codebook_version", "item_id"), partition_by=(), owner="semantic_ids",
    doc="Semantic ID per item and codebook version: level codes plus a final de-duplication token.",
    scale="small", small_below=20_000_000,
)

EVAL_METRICS = TableSpec(
    "eval_metrics",
    pa.schema([
        ("ds", pa.string()), ("embeddings_ds", pa.string()), ("model_version", pa.string()),
        ("method", pa.string()), ("metric", pa.string()), ("value", pa.float64()),
    ]),
    key=("ds", "method", "metric"), partition_by=("ds",), owner="evaluate",
    doc="Next-day metrics: embeddings of embeddings_ds scored against the plays of ds.",
    scale="small", small_below=1_000_000,
)

PUBLISH = TableSpec(
    "publish",
    pa.schema([
        ("ds", pa.string()), ("model_version", pa.string()), ("codebook_version", pa.int64()),
        ("index_uri", pa.string()), ("table_versions", pa.string()), ("published_at", TS),
    ]),
    key=("ds",), partition_by=(), owner="publish",
    doc="What downstream readers use: for each published ds, the model, codebook, index and table versions.",
    scale="small", small_below=1_000_000,
)

FACET = pa.struct([("kind", pa.string()), ("name", pa.string()), ("weight", pa.float64())])

TASTE_PROFILES = TableSpec(
    "taste_profiles",
    pa.schema([
        ("user_id", pa.string()), ("text", pa.string()), ("facets", pa.list_(FACET)),
        ("regions", pa.list_(FACET)), ("edits", pa.list_(pa.string())), ("steered_embedding", VECTOR),
        ("model_version", pa.string()), ("ds", pa.string()),
    ]),
    key=("user_id",), partition_by=("ds",), owner="profile",
    doc="A readable taste profile per user of ds's user_sequences: text, facets (kind genre/artist/show/"
        "item_type, weight = share of the window's plays), nearest catalog regions (kind sid_prefix), the "
        "edits in force, and for users with more/less edits the steered vector beside user_embeddings' raw one.",
    scale="per_user",
)

PROFILE_EDITS = TableSpec(
    "profile_edits",
    pa.schema([
        ("user_id", pa.string()), ("kind", pa.string()), ("name", pa.string()), ("action", pa.string()),
        ("from_ds", pa.string()), ("withdrawn_from_ds", pa.string()), ("edited_at", TS),
        ("withdrawn_at", TS), ("source", pa.string()),
    ]),
    key=("user_id", "kind", "name"), partition_by=(), owner="profile",
    doc="People's edits of their taste profile (`factory profile edit`, jobs/steps/profile_edits.py): one "
        "standing instruction (more, less, forget) per user and facet, in force from from_ds until "
        "withdrawn_from_ds; the features and profile steps apply it. The profile step creates it empty.",
    scale="small", small_below=10_000_000,
)

ALL_TABLES: tuple[TableSpec, ...] = (
    EVENTS, QUARANTINE, ITEMS, ITEM_VOCAB, USER_SEQUENCES, USER_EMBEDDINGS, ITEM_EMBEDDINGS,
    CONTENT_VECTORS, CODEBOOKS, ITEM_TOKENS, EVAL_METRICS, PUBLISH, TASTE_PROFILES, PROFILE_EDITS,
)
TABLES_BY_NAME = {t.name: t for t in ALL_TABLES}


def tables_markdown() -> str:
    """docs/tables.md, rendered from this registry (a test keeps the file in step)."""
    lines = ["# Tables", "",
             "Rendered from `jobs/lakehouse/tables.py` by `factory tables > docs/tables.md`; do not edit by hand.", ""]
    for spec in ALL_TABLES:
        lines += [f"## {spec.name}", "", spec.doc, "",
                  f"- key: {', '.join(spec.key)}",
                  *([f"- also unique: {', '.join(spec.unique)}"] if spec.unique else []),
                  f"- partitioned by: {', '.join(spec.partition_by) or 'not partitioned'}",
                  f"- written by step: `{spec.owner}`",
                  f"- scale: {spec.scale}" + (f" (through the driver below {spec.small_below:,} rows)" if spec.small_below
                                              else " (engines write the files, the driver commits metadata)"), "",
                  "| column | type |", "|---|---|"]
        lines += [f"| {field.name} | {field.type} |" for field in spec.schema]
        lines.append("")
    return "\n".join(lines)
