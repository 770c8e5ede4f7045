"""The colour filter array (Bayer pattern) of a one-shot-colour frame, from its header or the config.

A pattern is named by the colours of its top-left 2x2 cell read row by row: ``"RGGB"`` is R, G on
the first row and G, B on the second. ccdwatch stores and uses the pattern *of the array as
astropy reads it*: ``data[0, 0]`` has the colour ``pattern[0]``, ``data[0, 1]`` ``pattern[1]``,
``data[1, 0]`` ``pattern[2]`` and ``data[1, 1]`` ``pattern[3]``.

Headers state it otherwise, and this module translates:

* ``BAYERPAT`` (N.I.N.A., SharpCap, INDI, MaxIm DL >= 6.23, APT ...), else ``COLORTYP`` when it
  holds a pattern (``'MONO'``, ``'RGB'`` and the like mean no mosaic), names the pattern of the
  image *read top-down*, from the sensor's first row -- the convention of the capture programs
  and of Siril, which introduced ``ROWORDER`` with CCDCiel for this very reason;
* ``XBAYROFF`` / ``YBAYROFF`` shift it: the pattern starts at column ``XBAYROFF``, row
  ``YBAYROFF`` of the image read top-down (ASCOM's ``BayerOffsetX/Y``);
* ``XORGSUBF`` / ``YORGSUBF``, the origin of a subframe on the sensor: ASCOM's Bayer offsets are
  those of the full sensor, so an odd subframe origin shifts the pattern once more;
* ``ROWORDER = 'BOTTOM-UP'`` says the first stored row is the image's *bottom* row: the pattern's
  top row is then the last row of the array, which flips the pattern's rows when the image has
  an even number of rows. ``'TOP-DOWN'`` -- or no ``ROWORDER`` at all, since nearly every camera
  driver writes its rows in read-out order -- means the array's row 0 is the top row.

An override from the configuration (a pattern, or ``"none"`` for a monochrome camera) replaces
``BAYERPAT``/``COLORTYP`` and is read the same way (offsets, subframe and row order still apply).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ccdwatch.headers.cards import _Cards

__all__ = ["PATTERNS", "bayerpat_card", "flip_rows", "header_pattern", "parse_pattern", "shift_pattern"]

#: The four Bayer patterns, named by their top-left 2x2 cell read row by row.
PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")

#: Override values that mean "a monochrome sensor: ignore the header's pattern".
MONO_WORDS = frozenset({"none", "mono", "monochrome"})

_PATTERN_KEYS = ("BAYERPAT", "COLORTYP")


def parse_pattern(text: object) -> str | None:
    """A Bayer pattern name (any case, spaces and ``-`` ignored) -> ``"RGGB"`` etc.; None otherwise."""
    if not isinstance(text, str):
        return None
    name = text.upper().replace(" ", "").replace("-", "").replace("_", "")
    return name if name in PATTERNS else None


def shift_pattern(pattern: str, dx: int, dy: int) -> str:
    """The pattern of a mosaic whose pixel (0, 0) is pixel (``dx``, ``dy``) of one with ``pattern``."""
    cell = (pattern[0:2], pattern[2:4])
    return "".join(cell[(r + dy) % 2][(c + dx) % 2] for r in (0, 1) for c in (0, 1))


def flip_rows(pattern: str, ny: int) -> str:
    """The pattern at array row 0 of an image of ``ny`` rows stored bottom-up, whose top row
    (``pattern``'s first) is array row ``ny - 1``: the rows swap when ``ny`` is even."""
    return pattern[2:4] + pattern[0:2] if ny % 2 == 0 else pattern


def _offset(cards: _Cards, key: str) -> int:
    """A Bayer offset or subframe origin card as an int (0 when absent or unusable)."""
    value = cards.whole(key, "Bayer offset / subframe origin", lo=-(10**7), hi=10**7)
    return value or 0


def _row_order(cards: _Cards) -> str:
    return (cards.text("ROWORDER") or "TOP-DOWN").upper().replace("_", "-")


def _shift(cards: _Cards) -> tuple[int, int]:
    return (_offset(cards, "XBAYROFF") + _offset(cards, "XORGSUBF"),
            _offset(cards, "YBAYROFF") + _offset(cards, "YORGSUBF"))


def bayerpat_card(pattern: str, header: Mapping[str, Any], *, naxis2: int | None) -> str:
    """The BAYERPAT value that states ``pattern`` (of the array as stored) under ``header``'s own
    ROWORDER, Bayer offsets and subframe origin: the inverse of :func:`header_pattern`, for a
    product that keeps the raw frame's geometry and cards."""
    cards = _Cards(header)
    if _row_order(cards) == "BOTTOM-UP" and naxis2 is not None:
        pattern = flip_rows(pattern, naxis2)
    return shift_pattern(pattern, *_shift(cards))  # a shift by an even step is no shift


def header_pattern(cards: _Cards, *, naxis2: int | None, override: str = "auto") -> str | None:
    """The Bayer pattern of the array as stored (see the module notes), or None for a monochrome frame.

    Parameters
    ----------
    cards : _Cards
        The raw header.
    naxis2 : int or None
        Rows of the image (for ``ROWORDER = 'BOTTOM-UP'``).
    override : str
        ``"auto"``: the header's ``BAYERPAT``/``COLORTYP``; ``"none"``: monochrome whatever the
        header says; a pattern: this one instead of the header's.
    """
    if override.lower() in MONO_WORDS:
        return None
    if override.lower() != "auto":
        base = parse_pattern(override)
    else:
        base = None
        for key in _PATTERN_KEYS:
            text = cards.text(key)
            base = parse_pattern(text)
            if base is not None:
                break
            if key == "BAYERPAT" and text is not None:
                cards.warn(f"Bayer pattern: BAYERPAT={text!r} is not one of {', '.join(PATTERNS)}; ignored")
    if base is None:
        return None
    pattern = shift_pattern(base, *_shift(cards))
    order = _row_order(cards)
    if order == "BOTTOM-UP":
        if naxis2 is None:
            cards.warn("Bayer pattern: ROWORDER='BOTTOM-UP' without NAXIS2; the pattern is read as top-down")
            return pattern
        return flip_rows(pattern, naxis2)
    if order != "TOP-DOWN":
        cards.warn(f"Bayer pattern: ROWORDER={order!r} is neither TOP-DOWN nor BOTTOM-UP; read as TOP-DOWN")
    return pattern
