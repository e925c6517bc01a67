"""Where raw drops land: one folder per source and day, holding one or more JSON-lines files.

    <landing>/events/ds=YYYY-MM-DD/*.jsonl    raw listening events (may contain bad lines)
    <landing>/catalog/ds=YYYY-MM-DD/*.jsonl   new and edited catalog items

The landing URI may be a local path or any pyarrow filesystem URI (s3://...). Files whose name
starts with "." or "_" are not part of a drop (files being written, markers such as _SUCCESS).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

from jobs.config import FactoryConfig
from jobs.days import parse_ds
from jobs.errors import DropMissing, DropRefused, FactoryError

SOURCES = ("events", "catalog")


def drop_uri(cfg: FactoryConfig, source: str, ds: str) -> str:
    if source not in SOURCES:
        raise FactoryError(f"Unknown drop source {source!r}; sources are: {', '.join(SOURCES)}.")
    parse_ds(ds)  # a ds becomes a folder name: only the exact YYYY-MM-DD form
    return f"{cfg.landing_uri.rstrip('/')}/{source}/ds={ds}"


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of a URI or of a local path, relative or not."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).resolve())
    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as err:  # pyarrow: ArrowInvalid (a ValueError) for an unknown scheme
        raise FactoryError(f"The landing URI {uri} (paths.landing_uri) cannot be opened: {err}; "
                           f"fix paths.landing_uri.") from None


def check_landing(cfg: FactoryConfig) -> None:
    """FactoryError unless paths.landing_uri is a folder that can be listed: a typo there is a
    configuration error, not a drop that is late, and must not be waited for."""
    fs, folder = _filesystem(cfg.landing_uri)
    kind = fs.get_file_info(folder).type
    if kind != pafs.FileType.Directory:
        what = "does not exist" if kind == pafs.FileType.NotFound else "is not a folder"
        raise FactoryError(f"The landing {cfg.landing_uri} (paths.landing_uri) {what}; point paths.landing_uri "
                           f"at the folder that holds the events/ and catalog/ drops.")


def drops_landed(cfg: FactoryConfig, ds: str) -> bool:
    """True when every source's drop folder for ds exists, False while one is still missing. A
    misconfiguration (a landing that is not there, an unknown scheme, a bad ds, no permission)
    raises instead: the DAG's sensor fails at once rather than waiting for its timeout."""
    check_landing(cfg)
    for source in SOURCES:
        try:
            drop_files(cfg, source, ds)
        except DropMissing:
            return False
    return True


def drop_files(cfg: FactoryConfig, source: str, ds: str) -> list[str]:
    """Paths of the drop's files, sorted; a clear error if the drop folder is missing."""
    fs, folder = _filesystem(drop_uri(cfg, source, ds))
    info = fs.get_file_info(folder)
    if info.type != pafs.FileType.Directory:
        raise DropMissing(
            f"No {source} drop for ds={ds}: {drop_uri(cfg, source, ds)} does not exist. "
            f"Generate data with `factory generate` or point paths.landing_uri at your drops."
        )
    selector = pafs.FileSelector(folder, recursive=False)
    return sorted(f.path for f in fs.get_file_info(selector)
                  if f.is_file and f.path.endswith(".jsonl") and not f.base_name.startswith((".", "_")))


def check_drop_size(cfg: FactoryConfig, source: str, ds: str, files: list[str]) -> int:
    """Total bytes of the drop's files; DropRefused above gate.max_drop_bytes (checked before reading:
    a step holds a day's drop in memory, and a runaway client should not take the machine down)."""
    fs, _ = _filesystem(cfg.landing_uri)
    size = sum(info.size or 0 for info in fs.get_file_info(files))
    if size > cfg.gate.max_drop_bytes:
        raise DropRefused(
            f"ds={ds}: the {source} drop is {size:,} bytes in {len(files)} file(s), above "
            f"gate.max_drop_bytes={cfg.gate.max_drop_bytes:,}; nothing was read. Check the drop for a runaway "
            f"producer, or raise the gate if the day is really that large.", gate="max_drop_bytes",
        )
    return size


def drop_days(cfg: FactoryConfig, source: str) -> list[str]:
    """Every ds that has a drop folder for the source, sorted (empty if the landing has none)."""
    root = f"{cfg.landing_uri.rstrip('/')}/{source}"
    fs, folder = _filesystem(root)
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return []
    days = []
    for info in fs.get_file_info(pafs.FileSelector(folder, recursive=False)):
        ds = info.base_name.removeprefix("ds=")
        if info.type == pafs.FileType.Directory and info.base_name.startswith("ds="):
            try:
                parse_ds(ds)
            except FactoryError:
                continue
            days.append(ds)
    return sorted(days)


def read_lines(cfg: FactoryConfig, path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes without the newline) for every line of a drop file."""
    fs, _ = _filesystem(cfg.landing_uri)
    with fs.open_input_stream(path) as stream:
        lines = stream.read().split(b"\n")
    if lines[-1] == b"":  # the newline that ends the last line starts no new line
        lines.pop()
    yield from enumerate((line.removesuffix(b"\r") for line in lines), start=1)
