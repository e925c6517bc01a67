"""Where raw drops land: one folder per source and day, holding one or more JSON-lines files.

    <landing>/events/ds=YYYY-MM-DD/*.jsonl    raw listening events (may contain bad lines)
    <landing>/catalog/ds=YYYY-MM-DD/*.jsonl   new and edited catalog items

The landing URI may be a local path or any pyarrow filesystem URI (s3://...).
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow.fs as pafs

from jobs.config import FactoryConfig
from jobs.errors import FactoryError

SOURCES = ("events", "catalog")


def drop_uri(cfg: FactoryConfig, source: str, ds: str) -> str:
    assert source in SOURCES, source
    return f"{cfg.landing_uri.rstrip('/')}/{source}/ds={ds}"


def drop_files(cfg: FactoryConfig, source: str, ds: str) -> list[str]:
    """Paths of the drop's files, sorted; a clear error if the drop folder is missing."""
    fs, folder = pafs.FileSystem.from_uri(drop_uri(cfg, source, ds))
    info = fs.get_file_info(folder)
    if info.type != pafs.FileType.Directory:
        raise FactoryError(
            f"No {source} drop for ds={ds}: {drop_uri(cfg, source, ds)} does not exist. "
            f"Generate data with `factory generate` or point paths.landing_uri at your drops."
        )
    selector = pafs.FileSelector(folder, recursive=False)
    return sorted(f.path for f in fs.get_file_info(selector) if f.is_file and f.path.endswith(".jsonl"))


def read_lines(cfg: FactoryConfig, path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes without the newline) for every line of a drop file."""
    fs, _ = pafs.FileSystem.from_uri(cfg.landing_uri)
    with fs.open_input_stream(path) as stream:
        lines = stream.read().split(b"\n")
    if lines[-1] == b"":  # the newline that ends the last line starts no new line
        lines.pop()
    yield from enumerate((line.removesuffix(b"\r") for line in lines), start=1)
