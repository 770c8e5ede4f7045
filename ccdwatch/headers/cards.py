"""Case-insensitive, first-occurrence access to a raw header's cards, with the warnings log."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ccdwatch.headers.values import _Bad, _clean_text, _show, _to_float, _to_int

#: Values that mean "nothing" in a FILTER/OBJECT card.
#: Values that name nothing (an OBJECT or FILTER card a program fills when it knows none: fields
#: named "Unknown" are different fields, grouped by their pointing, not one target).
_NULL_WORDS = frozenset({"none", "null", "n/a", "-", "--", "unknown", "untitled"})


class _Cards:
    """Case-insensitive, first-occurrence view of a raw header, with a warning log."""

    def __init__(self, header: Mapping[str, Any]) -> None:
        self.values: dict[str, Any] = {}
        self.warnings: list[str] = []
        for key, value in header.items():
            name = _clean_text(key, cap=80)
            if name is None:
                continue
            name = name.upper()
            if name.startswith("HIERARCH "):
                name = name[9:].strip()
            if name in ("COMMENT", "HISTORY") or name in self.values:
                continue
            self.values[name] = value

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def present(self, key: str) -> bool:
        return self.text(key) is not None

    def text(self, key: str) -> str | None:
        return _clean_text(self.values.get(key))

    def first_text(self, keys: Sequence[str], *, null_words: bool = False) -> str | None:
        for key in keys:
            text = self.text(key)
            if text is not None and not (null_words and text.lower() in _NULL_WORDS):
                return text
        return None

    def number(
        self,
        keys: Sequence[str],
        what: str,
        *,
        check: Callable[[float], str | None] | None = None,
        units: Mapping[str, float] | None = None,
    ) -> float | None:
        """First usable number among ``keys``; bad values are reported and skipped."""
        for key in keys:
            raw = self.values.get(key)
            if _clean_text(raw) is None:
                continue
            try:
                number = _to_float(raw, units)
            except _Bad as exc:
                self.warn(f"{what}: {key}={_show(raw)} {exc}; ignored")
                continue
            problem = check(number) if check else None
            if problem:
                self.warn(f"{what}: {key}={_show(raw)} {problem}; ignored")
                continue
            return number
        return None

    def whole(self, key: str, what: str, *, lo: int, hi: int) -> int | None:
        raw = self.values.get(key)
        if _clean_text(raw) is None:
            return None
        try:
            number = _to_int(raw)
        except _Bad as exc:
            self.warn(f"{what}: {key}={_show(raw)} {exc}; ignored")
            return None
        if not lo <= number <= hi:
            self.warn(f"{what}: {key}={_show(raw)} is outside {lo}..{hi}; ignored")
            return None
        return number
