"""The full raw header as JSON-safe values, for the catalogue."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ccdwatch.headers.values import MAX_JSON_STRING, _int_text, _plain


def _json_text(text: str) -> str:
    if len(text) > MAX_JSON_STRING:
        text = text[:MAX_JSON_STRING] + "...[truncated]"
    return text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> '?'


def _json_value(value: Any) -> str | int | float | bool | None:
    plain = _plain(value)
    if plain is None or isinstance(plain, bool):
        return plain
    if isinstance(plain, int):  # beyond 64 bits: a string, as SQLite's JSON would lose it
        return plain if -(2**63) <= plain < 2**63 else _int_text(plain)
    if isinstance(plain, float):
        if math.isnan(plain):
            return "NaN"
        if math.isinf(plain):
            return "Infinity" if plain > 0 else "-Infinity"
        return plain
    return _json_text(str(plain))


def header_to_jsonable(header: Mapping[str, Any]) -> dict[str, Any]:
    """The full original header as JSON-safe values, for the catalogue's JSON column.

    Values become str/int/float/bool/None: NaN and infinities become the strings ``"NaN"``,
    ``"Infinity"``, ``"-Infinity"``; bytes are decoded (UTF-8, invalid bytes replaced); strings
    longer than 16 kB are truncated. COMMENT and HISTORY are always lists; any other keyword that
    occurs more than once becomes a list of its values in order. Blank cards are dropped.

    Returns
    -------
    dict
        Keyword -> value (or list of values), in header order; ``json.dumps`` accepts it with
        ``allow_nan=False``.
    """
    out: dict[str, Any] = {}
    for key, value in header.items():
        name = _json_text(str(_plain(key)))
        item = _json_value(value)
        if name.strip() == "" and item in (None, ""):
            continue
        if name in ("COMMENT", "HISTORY"):
            out.setdefault(name, []).append(item)
        elif name in out:
            previous = out[name]
            if isinstance(previous, list):
                previous.append(item)
            else:
                out[name] = [previous, item]
        else:
            out[name] = item
    return out
