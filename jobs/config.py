"""Typed configuration: one TOML file (factory.toml) plus environment overrides.

Precedence: dataclass defaults < the TOML file < FACTORY__SECTION__KEY environment variables.
The file is $FACTORY_CONFIG if set, else ./factory.toml if it exists. Unknown keys are errors.
Relative paths are resolved against the directory of the config file (or the working directory).

This module is the one place the factory reads its process environment: the config variables above,
the log level, the run key and RAY_ADDRESS (the functions at the end), and the environment handed to
child processes. (Spark and Ray start-up code still *sets* a few defaults for the processes it starts.)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "FACTORY__"
CONFIG_ENV = "FACTORY_CONFIG"  # the config file
LOG_LEVEL_ENV = "FACTORY_LOG_LEVEL"  # default WARNING
RUN_KEY_ENV = "FACTORY_RUN_KEY"  # the MLflow parent run to nest a step under when the caller passes none
RAY_ADDRESS_ENV = "RAY_ADDRESS"  # Ray's own: the cluster to join when [ray].address is empty


class ConfigError(ValueError):
    """A configuration value or file is wrong; the message says which and what to do."""


# Object stores the lake and landing may live on (delta-rs and pyarrow both speak them); "" is a local path.
URI_SCHEMES = ("", "file", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


@dataclass(frozen=True)
class PathsConfig:
    state_dir: str = ".state"  # everything the local run writes: lake, landing, MLflow, Airflow
    lake_uri: str = ""  # default: <state_dir>/lake; s3://bucket/lake on a cluster
    landing_uri: str = ""  # default: <state_dir>/landing (raw log and catalog drops)

    def __post_init__(self) -> None:
        for name in ("lake_uri", "landing_uri"):
            value = getattr(self, name)
            scheme = value.split("://", 1)[0] if "://" in value else ""
            if scheme not in URI_SCHEMES:
                raise ConfigError(f"paths.{name} {value!r} has an unsupported scheme; use a local path or one of "
                                  f"{', '.join(s + '://' for s in URI_SCHEMES if s)}.")
        if self.lake_uri and self.lake_uri.rstrip("/") == self.landing_uri.rstrip("/"):
            raise ConfigError("paths.lake_uri and paths.landing_uri must differ: raw drops and Delta tables need "
                              "their own roots.")


@dataclass(frozen=True)
class GeneratorConfig:
    seed: int = 7
    start_date: str = "2026-01-01"
    days: int = 4
    users: int = 3000
    new_users_per_day: int = 60
    genres: int = 12
    artists_per_genre: int = 25
    tracks: int = 2400
    shows: int = 60
    episodes: int = 600
    new_items_per_day: int = 40  # ~2% of the catalog
    edited_items_per_day: int = 20  # ~1%
    active_user_share: float = 0.6
    sessions_per_active_user: float = 2.0
    mean_session_length: float = 12.0
    malformed_share: float = 0.01  # share of raw lines with an injected defect
    # Taste shifts (issue 21): on day index taste_shift_day (0 = never) this share of the users so far
    # switch to a music genre they hardly played; for taste_shift_edit_share of them an edit saying so
    # ("more genre:G") lands in _generator/taste_shifts/ds=DS.jsonl for the profile_edits table.
    taste_shift_day: int = 0
    taste_shift_share: float = 0.0
    taste_shift_edit_share: float = 0.5


@dataclass(frozen=True)
class LakeConfig:
    storage_options: dict[str, str] = field(default_factory=dict)  # delta-rs object-store options


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[2]"
    driver_memory: str = "2g"
    shuffle_partitions: int = 4
    extra_conf: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RayConfig:
    address: str = ""  # "" = start a local Ray; "auto" or ray://host:10001 for a cluster
    num_cpus: int = 0  # local Ray only; 0 = all cores
    train_workers: int = 1
    # Ray Train's placement of the workers: "PACK" (fewest nodes) or "SPREAD" (one per node where it can;
    # the local cluster uses it so its two workers run on its two nodes).
    train_placement: str = "PACK"
    # Inference (step embed). On 2 cores an actor pool of two 1-CPU actors deadlocks: the upstream
    # read task never gets a CPU. Two actors of 0.5 CPU each leave a CPU for reads, and each runs one
    # torch thread: two single-threaded processes use both cores without intra-op synchronisation,
    # which on a shared machine was 3-10x faster than one actor with 2 threads (docs/benchmarks.md).
    # "pool": long-lived Ray actors that load the model once per process (jobs/steps/inference_pool.py);
    # "ray_data": a Ray Data map_batches job per call (a new actor pool each time: ~3 s fixed cost here).
    inference_engine: str = "pool"
    inference_actors: int = 2
    actor_num_cpus: float = 0.5  # Ray's scheduling share, not a thread count
    inference_threads: int = 0  # torch threads per actor; 0 = local cores / actors (cluster: max(1, actor_num_cpus))
    inference_batch_size: int = 4096  # rows per Ray Data batch, sorted by length inside the actor
    inference_tokens_per_forward: int = 4096  # rows x padded width per model call (rows sorted by length)
    storage_uri: str = ""  # Ray Train checkpoints; default <state_dir>/ray (shared storage on a cluster)
    log_to_driver: bool = False  # show workers' output (e.g. per-epoch training progress) in the driver


    def __post_init__(self) -> None:
        _one_of("ray.train_placement", self.train_placement, ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))
        _one_of("ray.inference_engine", self.inference_engine, ("pool", "ray_data"))
        if self.train_workers < 1:
            raise ConfigError(f"ray.train_workers must be >= 1; got {self.train_workers!r}.")


@dataclass(frozen=True)
class LocalClusterConfig:
    """`factory cluster up` (jobs/runtime/local_cluster.py): a Spark standalone master + one worker and a
    Ray head + a second Ray node on this machine. The master's and the head's ports come from
    spark.master ("spark://127.0.0.1:PORT") and ray.address ("127.0.0.1:PORT"); the rest from here."""

    spark_webui_port: int = 8181  # the master's web UI and JSON status (http://127.0.0.1:PORT/json/)
    spark_worker_cores: int = 1
    spark_worker_memory: str = "2g"  # >= spark.executor.memory (set it in [spark.extra_conf])
    ray_node_cpus: int = 2  # logical CPUs per Ray node (two nodes): room for train workers and Ray Data reads
    ray_object_store_mb: int = 256  # per node
    ray_port_base: int = 26400  # each node's other Ray ports: base + 20 * node + 0..19 (never Ray's defaults)
    ray_temp_dir: str = ""  # default /tmp/factory-ray-<head port> (unix socket paths must stay short)

    def __post_init__(self) -> None:
        if self.spark_worker_cores < 1 or self.ray_node_cpus < 1 or self.ray_object_store_mb < 78:
            raise ConfigError("local_cluster.spark_worker_cores and ray_node_cpus must be >= 1 and "
                              "ray_object_store_mb >= 78 (Ray's minimum).")


@dataclass(frozen=True)
class ComputeConfig:
    """Where the models run: training (Ray Train's use_gpu), user inference (the embed step's actors,
    one GPU each) and the item-text encoder (jobs/runtime/compute.py resolves "auto")."""

    device: str = "cpu"  # "cpu", "cuda", or "auto" (cuda where torch sees a GPU in the driver)
    # Precision of inference (user vectors and item-text vectors). "bf16" is refused at run time if
    # it moves the vectors below cosine 0.999 of fp32 (measured on the day's first batch).
    inference_dtype: str = "fp32"

    def __post_init__(self) -> None:
        _one_of("compute.device", self.device, ("cpu", "cuda", "auto"))
        _one_of("compute.inference_dtype", self.inference_dtype, ("fp32", "bf16"))


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = ""  # default: sqlite:///<state_dir>/mlflow.db
    artifact_uri: str = ""  # default: <state_dir>/mlartifacts
    experiment: str = "daily_embeddings"
    registered_model: str = "user_encoder"


@dataclass(frozen=True)
class FeaturesConfig:
    max_seq_len: int = 50
    window_days: int = 30
    incremental: bool = True  # update yesterday's sequences with today's events (jobs.steps.features)
    full_rebuild_every_days: int = 7  # re-read the whole window every N days (by ds), checking the increments; 0 = never


@dataclass(frozen=True)
class TrainConfig:
    retrain_every_days: int = 2  # otherwise the champion is reused
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    lr: float = 3e-3
    batch_size: int = 128
    epochs: int = 8
    loss: str = "full"  # "full" softmax or "sampled" softmax with logQ correction
    sampled_negatives: int = 512
    temperature: float = 0.05
    seed: int = 0
    max_regression: float = 0.02  # gate: a new model may lose at most this much validation NDCG@10
    # Scale: train on a seeded sample of the day's users (0 = all) within a clock budget (0 = epochs
    # only); embed still covers every user. docs/scaling.md explains why a sample is enough. The
    # budget is the nightly's (issue 17): 9.5 minutes of training clock, and the last step and final
    # validation that run past it keep a day within 10; a 100k-user / 50k-item day gets about one epoch.
    max_users: int = 0
    minutes: float = 9.5
    # Item vectors from catalog facets (jobs/steps/item_facets.py): genre + artist-or-show vectors,
    # each hashed into facet_buckets per level, plus a per-item residual; false = per-item ids only.
    item_facets: bool = True
    facet_buckets: int = 32_768
    # Backward-compatible retrains (issue 19): a warm-started retrain adds compat_weight x the mean
    # (1 - cosine) of each known item's new vector to the champion's, keeping the space where
    # consumers of yesterday's vectors expect it. 0 = off. Its cost in quality: docs/benchmarks.md.
    compat_weight: float = 0.0
    # The encoder's time-gap input: each event also carries the bucket of the time since the user's
    # previous event (models.sequences.time_gap_buckets over user_sequences' ts: 1 = first event, then
    # 2 + floor(log2(1 + gap seconds)), the last bucket holding every longer gap; 24 buckets reach ~3 days).
    # 0 = off; else the number of buckets, >= 2. Changing it trains a fresh model (no warm start).
    time_buckets: int = 0
    # torch threads per Ray Train worker; 0 = the cluster's CPUs / train workers. With one thread a fit
    # is bitwise reproducible from process to process; with more, a fresh process's first optimiser
    # step now and then comes out different in the last bits (measured: 0 to 1 of every 8-20 fresh
    # processes on this 2-core machine under load; docs/reliability.md), and the difference grows to
    # ~1e-5 per weight by the end of the fit. The fault world sets 1 so that a backfill and
    # day-by-day runs agree bit for bit.
    threads: int = 0

    def __post_init__(self) -> None:
        _one_of("train.loss", self.loss, ("full", "sampled"))
        if self.threads < 0:
            raise ConfigError(f"train.threads must be >= 0 (0 = the cluster's CPUs / train workers); got {self.threads!r}.")
        if self.max_users < 0 or self.minutes < 0:
            raise ConfigError("train.max_users and train.minutes must be >= 0 (0 = no limit).")
        if self.compat_weight < 0:
            raise ConfigError(f"train.compat_weight must be >= 0 (0 = off); got {self.compat_weight!r}.")
        if self.facet_buckets < 1:
            raise ConfigError(f"train.facet_buckets must be >= 1; got {self.facet_buckets!r}.")
        if self.time_buckets < 0 or self.time_buckets == 1:
            raise ConfigError(f"train.time_buckets must be 0 (off) or >= 2 (e.g. 24: gaps up to ~3 days); "
                              f"got {self.time_buckets!r}.")


@dataclass(frozen=True)
class SidConfig:
    """Semantic IDs (jobs/steps/semantic_ids.py; numbers behind the defaults in docs/benchmarks.md)."""

    levels: int = 4
    codes_per_level: int = 256
    kmeans_iterations: int = 20
    refit_every_days: int = 7
    encode_batch_size: int = 256
    seed: int = 0
    # Refit on quality drift: after a day's new and edited items are assigned, a threshold breached now
    # but not when the codebook was built triggers a refit (1.0 / 0.0 switch a check off).
    refit_max_collision_rate: float = 0.05  # share of items sharing their full code before de-duplication
    refit_min_perplexity_share: float = 0.5  # per level: perplexity / codes in the level
    refit_min_utilisation: float = 0.5  # per level: used codes / codes in the level
    # At a refit (and for edited items) an item keeps its previous code at a level unless the nearest
    # code is closer by more than a factor (1 + stickiness) in squared distance; 0 = plain nearest.
    refit_stickiness: float = 1.0
    # What a bare code (a SID without its de-duplication token) resolves to: "dedup" = nothing, a SID
    # needs its token; "popular" = the day's most played item among those sharing the code (Spotify).
    collision_policy: str = "dedup"
    # Weight of the collaborative item vector (item_embeddings of the day) fused with the content
    # vector: [sqrt(1-w) content, sqrt(w) collaborative]. 0 = content only.
    fuse_collaborative_weight: float = 0.0

    def __post_init__(self) -> None:
        _one_of("sid.collision_policy", self.collision_policy, ("dedup", "popular"))
        for name in ("refit_max_collision_rate", "refit_min_perplexity_share", "refit_min_utilisation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"sid.{name} must be a share between 0 and 1; got {getattr(self, name)!r}.")
        if self.refit_stickiness < 0:
            raise ConfigError(f"sid.refit_stickiness must be >= 0; got {self.refit_stickiness!r}.")
        if not 0.0 <= self.fuse_collaborative_weight < 1.0:
            raise ConfigError(f"sid.fuse_collaborative_weight must be in [0, 1); got {self.fuse_collaborative_weight!r}.")
        if min(self.levels, self.codes_per_level, self.kmeans_iterations, self.refit_every_days, self.encode_batch_size) < 1:
            raise ConfigError("sid.levels, codes_per_level, kmeans_iterations, refit_every_days and encode_batch_size "
                              "must be >= 1.")


@dataclass(frozen=True)
class ColdItemsConfig:
    """Vectors on day one for items the champion was not trained with: with item facets, the champion's
    own genre + creator vectors (jobs/steps/embed.item_vectors); without, a ridge map from the item's
    text vector to the item space, fitted daily on the items it knows (jobs/steps/content_item_vectors.py).
    enabled = false: item_embeddings holds the champion's trained rows only."""

    enabled: bool = True
    holdout_share: float = 0.2  # known items held out to pick the ridge strength and report the fit
    seed: int = 0
    # Fit only on known items with at least this many events in the day's user_sequences: a row the
    # encoder barely trained is near its random start and only adds noise (all known items when fewer
    # than MIN_FIT_ITEMS qualify). Measured in docs/benchmarks.md.
    min_events: int = 10

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout_share < 1.0:
            raise ConfigError(f"cold_items.holdout_share must be in [0, 1); got {self.holdout_share!r}.")
        if self.min_events < 0:
            raise ConfigError(f"cold_items.min_events must be >= 0; got {self.min_events!r}.")


@dataclass(frozen=True)
class IndexConfig:
    factory: str = "Flat"  # faiss index_factory string over inner product; e.g. "HNSW32" for large catalogs


@dataclass(frozen=True)
class EvaluateConfig:
    k: int = 10
    # A seeded sample of the users with an embedding on ds-1 and plays on ds (jobs/steps/evaluate.py):
    # at most this many reach the driver for the faiss search; 0 = all of them.
    max_users: int = 100_000
    seed: int = 0


@dataclass(frozen=True)
class GateConfig:
    """What a day must pass before it is published (docs/reliability.md). A failed gate stops the day loudly."""

    max_quarantine_share: float = 0.2  # ingest fails (after writing the evidence) above this share of bad lines
    min_raw_lines: int = 1  # an events drop with fewer lines is refused: an empty day is an upstream outage
    max_drop_bytes: int = 2 * 1024**3  # a larger events/catalog drop is refused unread (ingest holds a day in memory)
    max_collision_rate: float = 0.9  # publish refuses a codebook where more items share a full code before de-dup
    max_collision_rate_increase: float = 0.1  # ... or whose collision rate rose more than this over the serving codebook's
    min_drift_cosine: float = 0.2  # publish refuses a day whose users moved further under an unchanged model
    max_hr_drop: float = 0.5  # publish refuses a day whose next-day HR@10 fell by more than this share vs the last evaluated day

    def __post_init__(self) -> None:
        for name in ("max_quarantine_share", "max_collision_rate", "max_collision_rate_increase", "max_hr_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"gate.{name} must be a share between 0 and 1; got {getattr(self, name)!r}.")
        if not -1.0 <= self.min_drift_cosine <= 1.0:
            raise ConfigError(f"gate.min_drift_cosine must be a cosine between -1 and 1; got {self.min_drift_cosine!r}.")
        if self.min_raw_lines < 0 or self.max_drop_bytes <= 0:
            raise ConfigError("gate.min_raw_lines must be >= 0 and gate.max_drop_bytes > 0.")


@dataclass(frozen=True)
class GenerativeConfig:
    """Optional daily step `generative` (jobs/steps/generative.py): SID generation with a soft token.

    Off by default: the step then records that it was disabled. Numbers behind the defaults:
    docs/benchmarks.md, "Generative retrieval on MovieLens-1M".
    """

    enabled: bool = False
    model_dir: str = ""  # a local directory with a pretrained causal LM (from_pretrained); "" = tiny Llama from scratch
    hidden: int = 64  # tiny Llama only (MLP 4x hidden), as in the ML-1M benchmark
    layers: int = 2
    heads: int = 4
    history: int = 20  # last items (as SIDs) in each sequence
    targets_per_user: int = 8  # training examples per user: the last items of the day's sequence
    max_users: int = 5000  # users sampled for training (the projector then serves every user); 0 = all
    minutes: float = 5.0  # training-clock budget
    lr: float = 3e-3
    batch_size: int = 128
    soft_token: bool = True
    prompt: bool = True
    # Learn one logit for the last SID token of items the user consumed before (models/generative.py),
    # as the benchmark's generator does (docs/benchmarks.md, "Amazon Beauty with the factory's own SIDs").
    history_bias: bool = True
    beams: int = 30
    # Re-ranking (models/reranking.py): at most this many episodes in a list (-1 = no quota), at most
    # max_per_prefix items sharing their first prefix_len SID tokens (0 = no cap).
    max_episodes: int = 3
    prefix_len: int = 1
    max_per_prefix: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.hidden, self.layers, self.heads, self.history, self.targets_per_user, self.batch_size, self.beams) < 1:
            raise ConfigError("generative.hidden, layers, heads, history, targets_per_user, batch_size and beams must be >= 1.")
        if self.max_users < 0 or self.minutes <= 0 or self.lr <= 0 or self.prefix_len < 0 or self.max_per_prefix < 0:
            raise ConfigError("generative.max_users, prefix_len and max_per_prefix must be >= 0; minutes and lr > 0.")


@dataclass(frozen=True)
class ProfileConfig:
    """Step `profile` (jobs/steps/profile.py): readable taste profiles, and what people's edits do.

    A "more"/"less" edit moves the user's vector v (unit) by w = steer_strength * (unit direction of
    sum(more facets) - sum(less facets)), a facet's direction being unit((1 - personal_weight) x the
    normalised mean of its items' vectors + personal_weight x the normalised mean of the vectors of
    its items the user played); the published steered vector is (v + w) / |v + w|, at most asin(steer_strength) away
    from v (49 degrees at 0.75). "forget" removes the named items' events from the user's sequence.
    """

    apply_edits: bool = True  # off: edits are recorded but change no sequence, vector or recommendation
    # Both chosen on a second generated world (generator.seed 1; `factory bench taste --world-seed 1`), not on
    # the reported one: the HR@10 of shifted users' edits (docs/benchmarks.md).
    steer_strength: float = 0.75  # the bound of a steered vector's move (above)
    personal_weight: float = 1.0  # 0 = the facet's catalog direction; 1 = the user's own plays of it (above)
    top_facets: int = 3  # facets per kind in the profile (genres, artists, shows)
    recent_events: int = 10  # the newest events of a sequence that "lately" compares with the whole
    lately_margin: float = 0.15  # a genre's recent share must exceed its overall share by this to be "lately more"
    regions: int = 2  # nearest catalog regions (semantic-ID first tokens) named in the profile

    def __post_init__(self) -> None:
        if not 0.0 <= self.steer_strength < 1.0:
            raise ConfigError(f"profile.steer_strength must be in [0, 1); got {self.steer_strength!r}.")
        if not 0.0 <= self.personal_weight <= 1.0:
            raise ConfigError(f"profile.personal_weight must be in [0, 1]; got {self.personal_weight!r}.")
        if min(self.top_facets, self.recent_events) < 1 or self.regions < 0:
            raise ConfigError("profile.top_facets and recent_events must be >= 1, profile.regions >= 0.")


@dataclass(frozen=True)
class FactoryConfig:
    root: str = "."  # directory relative paths are resolved against (set by the loader)
    paths: PathsConfig = field(default_factory=PathsConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    lake: LakeConfig = field(default_factory=LakeConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    local_cluster: LocalClusterConfig = field(default_factory=LocalClusterConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sid: SidConfig = field(default_factory=SidConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    cold_items: ColdItemsConfig = field(default_factory=ColdItemsConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    generative: GenerativeConfig = field(default_factory=GenerativeConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)

    # Derived locations: one place that knows where the local run keeps things.
    @property
    def state_dir(self) -> Path:
        return (Path(self.root) / self.paths.state_dir).resolve()

    @property
    def lake_uri(self) -> str:
        return self.paths.lake_uri or str(self.state_dir / "lake")

    @property
    def landing_uri(self) -> str:
        return self.paths.landing_uri or str(self.state_dir / "landing")

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.state_dir / 'mlflow.db'}"

    @property
    def mlflow_artifact_uri(self) -> str:
        return self.mlflow.artifact_uri or (self.state_dir / "mlartifacts").as_uri()

    @property
    def ray_storage_uri(self) -> str:
        return self.ray.storage_uri or str(self.state_dir / "ray")

    @property
    def airflow_home(self) -> Path:
        return self.state_dir / "airflow"


def load_config(path: str | Path | None = None, overrides: dict[str, str] | None = None) -> FactoryConfig:
    """Load the config file, then FACTORY__SECTION__KEY env vars, then explicit overrides."""
    path = Path(path) if path else _default_config_path()
    raw: dict = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist; pass an existing TOML file or unset FACTORY_CONFIG.")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"Config file {path} is not valid TOML: {err}.") from None
    root = str((path.parent if path else Path.cwd()).resolve())
    raw = {"root": root, **raw}
    env = {k[len(ENV_PREFIX):]: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    for dotted, value in {**{_env_key(k): v for k, v in env.items()}, **(overrides or {})}.items():
        _set_dotted(raw, dotted, value)
    return _build(FactoryConfig, raw, "config")


def with_overrides(cfg: FactoryConfig, **sections: dict) -> FactoryConfig:
    """A copy of cfg with some fields of some sections replaced (used by tests and benchmarks)."""
    changes = {name: dataclasses.replace(getattr(cfg, name), **values) for name, values in sections.items()}
    return dataclasses.replace(cfg, **changes)


def as_dict(cfg: FactoryConfig) -> dict:
    return dataclasses.asdict(cfg)


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")


def _default_config_path() -> Path | None:
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    local = Path.cwd() / "factory.toml"
    return local if local.is_file() else None


def _env_key(name: str) -> str:
    """SPARK__EXTRA_CONF__spark.x -> spark.extra_conf.spark.x: section and field names are
    case-insensitive, keys inside a table (storage options, Spark conf) keep their case."""
    parts = name.split("__")
    return ".".join([p.lower() for p in parts[:2]] + parts[2:])


def _set_dotted(raw: dict, dotted: str, value: str) -> None:
    *sections, key = dotted.split(".", 2) if dotted.count(".") >= 2 else dotted.split(".")
    node = raw
    for section in sections:
        node = node.setdefault(section, {})
    node[key] = value


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a table of keys, got {values!r}.")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"Unknown key(s) {', '.join(unknown)} in [{where}]; known keys: {', '.join(sorted(known))}.")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    return cls(**kwargs)


def _coerce(hint, value, where: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {value!r}.")
        return {str(k): str(v) for k, v in value.items()}
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError(value)
                return value.lower() in {"true", "1", "yes"}
            return bool(value)
        if hint in (int, float, str):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be of type {hint.__name__}, got {value!r}.") from None
    return value


# --- the rest of the process environment ------------------------------------------------------

def configure_logging(fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
    """Log to stderr at $FACTORY_LOG_LEVEL (default WARNING): every command line sets logging up this way."""
    logging.basicConfig(level=os.environ.get(LOG_LEVEL_ENV, "WARNING"), format=fmt)


def run_key_from_env() -> str | None:
    """$FACTORY_RUN_KEY: the run key a step runs under when its caller passes none."""
    return os.environ.get(RUN_KEY_ENV) or None


def ray_address(cfg: FactoryConfig) -> tuple[str, str]:
    """(address, the setting it came from): [ray].address, else $RAY_ADDRESS, else "" (a local Ray)."""
    if cfg.ray.address:
        return cfg.ray.address, "ray.address or FACTORY__RAY__ADDRESS"
    return os.environ.get(RAY_ADDRESS_ENV, ""), RAY_ADDRESS_ENV


def env_overrides(overrides: dict[str, str]) -> dict[str, str]:
    """Dotted overrides ({"train.epochs": "2"}) as the FACTORY__SECTION__KEY variables a child process reads."""
    return {f"{ENV_PREFIX}{key.replace('.', '__').upper()}": value for key, value in overrides.items()}


def child_environment(without_prefix: str | None = None, **extra: str) -> dict[str, str]:
    """This process's environment for a child process, without the variables starting with
    `without_prefix` (e.g. "FACTORY": none of the caller's settings leak in), plus `extra`."""
    kept = {k: v for k, v in os.environ.items() if not (without_prefix and k.startswith(without_prefix))}
    return {**kept, **extra}
