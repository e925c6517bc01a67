"""One raw line of a drop as a hostile producer may write it: the rules every drop reader (ingest's
events, catalog's items) applies before a value may become a column of a clean row.

A line is read as bytes. It becomes a JSON object whose values the readers then check field by
field, or raises Rejected(reason, detail). What may reach Arrow and Delta from a clean row: strings
that are valid UTF-8 (no lone UTF-16 surrogates, which JSON's "\\ud800" escapes can produce and Arrow
cannot encode), identifiers without control characters, integers inside int64. Reasons given here:

    line_too_long    more than MAX_LINE_BYTES bytes (read before anything is parsed)
    non_utf8         bytes that are not UTF-8
    invalid_json     not JSON, or not an object (also a byte-order mark, NaN/Infinity literals)
    too_deep         nested deeper than the parser's recursion limit (RecursionError)
    invalid_number   an integer literal longer than Python's int-size limit (4,300 digits: ValueError)
    duplicate_key    the same key twice in one object (which value is meant is ambiguous)
    invalid_text     a lone surrogate, a control character, or an identifier longer than MAX_ID_CHARS
    out_of_range     an integer outside int64

Every rule is pinned by tests/steps/test_raw_line.py, and property tests (hypothesis) check that any
bytes, and any JSON value in any field, become a writable clean row or a quarantine row with a reason.
"""

from __future__ import annotations

import json
import re

MAX_LINE_BYTES = 1 << 20  # 1 MiB: far above any real event or catalog line, small enough to parse safely
MAX_ID_CHARS = 512
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# Control characters (C0, DEL, C1) and lone surrogates. Free text may hold tabs and line breaks.
_NOT_IN_IDS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_NOT_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


class Rejected(Exception):
    """A line that cannot become a clean row: `reason` (a short name, counted per day) and `detail`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


class _DuplicateKey(Exception):
    pass


def _object(pairs: list[tuple[str, object]]) -> dict:
    row = dict(pairs)
    if len(row) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return row


def _no_constant(name: str):
    raise ValueError(f"the literal {name} is not JSON")


def parse_object(line: bytes) -> dict:
    """The JSON object of one raw line (keys unique), or Rejected naming the first rule it broke."""
    if len(line) > MAX_LINE_BYTES:
        raise Rejected("line_too_long", f"{len(line):,} bytes, above {MAX_LINE_BYTES:,}")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Rejected("non_utf8", f"invalid UTF-8 at byte {err.start}") from None
    try:
        row = json.loads(text, object_pairs_hook=_object, parse_constant=_no_constant)
    except json.JSONDecodeError as err:  # a ValueError: caught first
        raise Rejected("invalid_json", err.msg) from None
    except RecursionError:
        raise Rejected("too_deep", "nested deeper than the JSON parser's recursion limit") from None
    except _DuplicateKey as err:
        raise Rejected("duplicate_key", f"key {str(err)!r:.60} appears twice") from None
    except ValueError as err:  # int literals above sys.get_int_max_str_digits(); the NaN/Infinity literals
        reason = "invalid_json" if "literal" in str(err) else "invalid_number"
        raise Rejected(reason, str(err)[:120]) from None
    if not isinstance(row, dict):
        raise Rejected("invalid_json", f"expected an object, got {type(row).__name__}")
    return row


def check_id(key: str, value: str) -> None:
    """An identifier: no control character or lone surrogate, at most MAX_ID_CHARS characters."""
    if len(value) > MAX_ID_CHARS:
        raise Rejected("invalid_text", f"{key} has {len(value):,} characters, above {MAX_ID_CHARS}")
    bad = _NOT_IN_IDS.search(value)
    if bad:
        raise Rejected("invalid_text", f"{key} holds {_name(bad.group())} at character {bad.start()}")


def check_text(key: str, value: str) -> None:
    """Free text (titles, descriptions): tabs and line breaks allowed; other controls and lone surrogates not."""
    bad = _NOT_IN_TEXT.search(value)
    if bad:
        raise Rejected("invalid_text", f"{key} holds {_name(bad.group())} at character {bad.start()}")


def check_int64(key: str, value: int) -> None:
    if not INT64_MIN <= value <= INT64_MAX:
        digits = str(value)
        raise Rejected("out_of_range", f"{key} {digits[:24]}{'...' if len(digits) > 24 else ''} is outside int64")


def _name(char: str) -> str:
    kind = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "the control character"
    return f"{kind} U+{ord(char):04X}"
