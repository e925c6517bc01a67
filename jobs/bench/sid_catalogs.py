"""The item catalogs `factory bench sid` measures: a JSONL/CSV file, MovieLens-1M, or the factory lake.

Each gives item ids, texts, optional labels (for prefix purity) and optionally collaborative vectors
to fuse with the content vectors. Research-only data is read where it lies, never copied.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from jobs.config import FactoryConfig
from jobs.errors import FactoryError


@dataclasses.dataclass(frozen=True)
class ItemCatalog:
    ids: list[str]
    texts: list[str]
    labels: list[tuple[str, ...]] | None  # one tuple of label values per item
    source: str
    sha256: str
    collaborative: np.ndarray | None = None  # (N, d) item vectors to fuse with the content vectors, zeros if unknown
    collaborative_source: str | None = None

def read_catalog(path: Path) -> ItemCatalog:
    """An item catalog from JSONL or CSV (id, text[, label]); FactoryError naming the problem otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FactoryError(f"--items {path} does not exist; pass a JSONL or CSV file with columns id,text[,label].")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FactoryError(f"{path} is not UTF-8 (byte {err.start}); re-encode it as UTF-8.") from None
    rows = []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise FactoryError(f"{path} line {number} is not JSON ({err.msg}); write one object per line.") from None
            if not isinstance(row, dict):
                raise FactoryError(f"{path} line {number} is not a JSON object with id and text.")
            rows.append((number, row))
    elif path.suffix.lower() in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if not reader.fieldnames or not {"id", "text"} <= set(reader.fieldnames):
            raise FactoryError(f"{path} needs a header with columns id,text[,label]; found {reader.fieldnames}.")
        rows = [(number, row) for number, row in enumerate(reader, 2)]
    else:
        raise FactoryError(f"{path}: unknown catalog format {path.suffix!r}; use .jsonl or .csv with columns id,text[,label].")
    ids, texts, labels = [], [], []
    for number, row in rows:
        item, body = row.get("id"), row.get("text")
        if item in (None, "") or not isinstance(body, str) or not body.strip():
            raise FactoryError(f"{path} line {number} lacks a non-empty id or text; every item needs both.")
        ids.append(str(item))
        texts.append(body)
        label = row.get("label")
        labels.append(tuple(str(v) for v in label) if isinstance(label, list) else
                      tuple(v for v in str(label).split("|") if v) if label not in (None, "") else ())
    if not ids:
        raise FactoryError(f"{path} holds no items; pass a catalog with at least one id,text row.")
    if len(set(ids)) != len(ids):
        raise FactoryError(f"{path} repeats item ids (e.g. {next(i for i in ids if ids.count(i) > 1)!r}); ids must be unique.")
    return ItemCatalog(ids, texts, labels if any(labels) else None, str(path), hashlib.sha256(raw).hexdigest())

def read_movielens(folder: Path) -> ItemCatalog:
    """ML-1M movies restricted to DIR/item_map.csv's movie ids: title as text, genres as labels."""
    folder = Path(folder)
    movies, item_map = folder / "movies.dat", folder / "item_map.csv"
    for needed in (movies, item_map):
        if not needed.is_file():
            raise FactoryError(f"--movielens {folder} lacks {needed.name}; pass the folder holding movies.dat and item_map.csv.")
    with item_map.open(newline="") as handle:
        mapping = {int(r["movie_id"]): int(r["sasrec_item_id"]) for r in csv.DictReader(handle)}
    raw = movies.read_bytes()
    ids, texts, labels, sasrec = [], [], [], []
    for number, line in enumerate(raw.decode("latin-1").splitlines(), 1):
        parts = line.split("::")
        if len(parts) != 3 or not parts[0].isdigit():
            raise FactoryError(f"{movies} line {number} is not MovieID::Title::Genres.")
        if int(parts[0]) in mapping:
            ids.append(parts[0])
            texts.append(parts[1])
            labels.append(tuple(parts[2].split("|")))
            sasrec.append(mapping[int(parts[0])])
    if not ids:
        raise FactoryError(f"No movie of {item_map} is in {movies}; check that both come from the same data set.")
    ratings = folder / "ml-1m.txt"
    collaborative = collaborative_svd(ratings, sasrec) if ratings.is_file() else None
    source = f"truncated SVD (64 d) of the log(1 + count) item x user matrix of {ratings.name}" if ratings.is_file() else None
    return ItemCatalog(ids, texts, labels, str(folder), hashlib.sha256(raw).hexdigest(), collaborative, source)

def read_lake(cfg: FactoryConfig, ds: str) -> ItemCatalog:
    """The factory lake's catalog on ds (item text, genre as label) with that day's item_embeddings."""
    import pyarrow.compute as pc

    from jobs.lakehouse import delta
    from jobs.lakehouse.tables import ITEM_EMBEDDINGS, ITEMS

    items = delta.read(cfg, ITEMS, columns=["item_id", "text", "genre", "first_seen_ds"])
    items = items.filter(pc.less_equal(items.column("first_seen_ds"), ds)).sort_by("item_id")
    if items.num_rows == 0:
        raise FactoryError(f"The lake at {cfg.lake_uri} has no items on {ds}; run the catalog step (or pick another --lake-ds).")
    ids = items.column("item_id").to_pylist()
    embeddings = delta.read(cfg, ITEM_EMBEDDINGS, where={"ds": ds}, columns=["item_id", "embedding"])
    collaborative = None
    if embeddings.num_rows:
        by_id = dict(zip(embeddings.column("item_id").to_pylist(), embeddings.column("embedding").to_pylist()))
        dim = len(next(iter(by_id.values())))
        collaborative = np.array([by_id.get(i, [0.0] * dim) for i in ids], np.float32)
    source = f"item_embeddings of {ds} ({embeddings.num_rows} of {len(ids)} items)" if collaborative is not None else None
    return ItemCatalog(ids, items.column("text").to_pylist(), [(g or "",) for g in items.column("genre").to_pylist()],
                       f"{cfg.lake_uri} items of {ds}", hashlib.sha256("\n".join(ids).encode()).hexdigest(), collaborative,
                       source)

def collaborative_svd(ratings: Path, sasrec_ids: list[int], dim: int = 64) -> np.ndarray:
    """Unit item vectors (N, dim) from SASRec-format `user item` lines: the top left singular vectors
    (scaled by sqrt of the singular values) of the log(1 + count) item x user matrix, rows in sasrec_ids order."""
    pairs = np.loadtxt(ratings, dtype=np.int64, usecols=(0, 1), ndmin=2)
    row_of = np.full(max(int(pairs[:, 1].max()), max(sasrec_ids)) + 1, -1)
    row_of[sasrec_ids] = np.arange(len(sasrec_ids))
    rows = row_of[pairs[:, 1]]
    keep = rows >= 0
    users = np.unique(pairs[keep, 0], return_inverse=True)[1].reshape(-1)
    matrix = np.zeros((len(sasrec_ids), users.max() + 1), np.float32)
    np.add.at(matrix, (rows[keep], users), 1.0)
    matrix = np.log1p(matrix)
    values, vectors = np.linalg.eigh(matrix @ matrix.T)  # ascending; eigenvalues are squared singular values
    dim = min(dim, len(sasrec_ids))
    x = (vectors[:, -dim:] * np.maximum(values[-dim:], 0.0) ** 0.25).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
