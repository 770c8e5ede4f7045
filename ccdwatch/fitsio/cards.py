"""Header cards that astropy cannot parse, repaired on an in-memory copy (the file is never touched).

Camera programs write cards that break the FITS standard: decimal commas (``EXPTIME = 6,4E-05``
from a PC set to a European locale), numbers with units or stray characters, unquoted strings.
astropy refuses such a card only when its value is read (``VerifyError: Unparsable card``),
which used to reject the whole frame. Each such card is rebuilt from its 80 characters: a
number if the text is one (a decimal comma read as a point), else the text as a string.
"""

from __future__ import annotations

import re
import warnings

from astropy.io import fits

_NUMBER = re.compile(r"^[+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eEdD][+-]?\d+)?$")


def _value_from_text(text: str) -> str | int | float | bool:
    """The value a card's value field most plausibly holds."""
    value = text.strip()
    if value.startswith("'"):  # a string with a broken quote: take what lies between quotes
        return value.strip("'").rstrip()
    if value in ("T", "F"):
        return value == "T"
    if _NUMBER.match(value):
        number = value.replace(",", ".").replace("D", "E").replace("d", "e")
        try:
            return int(number) if re.fullmatch(r"[+-]?\d+", number) else float(number)
        except ValueError:
            pass
    return value


def _split_comment(field: str) -> tuple[str, str]:
    """(value text, comment) of a card's value field: the first '/' outside quotes."""
    quoted = False
    for i, ch in enumerate(field):
        if ch == "'":
            quoted = not quoted
        elif ch == "/" and not quoted:
            return field[:i], field[i + 1:].strip()
    return field, ""


def repair_header(header: fits.Header) -> tuple[fits.Header, list[str]]:
    """A copy of ``header`` in which every card astropy cannot parse is rebuilt leniently.

    Returns
    -------
    header, repairs
        The header (the same object when nothing needed repair) and one note per repaired card,
        e.g. ``"EXPTIME = 6,4E-05 read as 6.4e-05 (decimal comma)"``.
    """
    # the 80 characters as read: astropy's ``Card.image`` "fixes" a bad card before showing it
    images = [getattr(card, "_image", None) or "" for card in header.cards]
    bad: list[int] = []
    for i, card in enumerate(header.cards):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a warning means astropy could read it
                _ = card.value
        except Exception:  # noqa: BLE001 - astropy cannot parse it: rebuild the card
            bad.append(i)
    if not bad:
        return header, []
    repaired = fits.Header()
    notes: list[str] = []
    for i, card in enumerate(header.cards):
        if i not in bad:
            repaired.append(card, end=True)
            continue
        image = images[i].ljust(80)
        keyword = image[:8].strip().upper()
        if not keyword or image[8:10] != "= ":  # commentary or junk: keep it as a comment
            repaired.append(("COMMENT", image.strip()), end=True)
            notes.append(f"unparsable card {image.strip()[:40]!r} kept as a COMMENT")
            continue
        text, comment = _split_comment(image[10:])
        value = _value_from_text(text)
        why = " (decimal comma)" if isinstance(value, float) and "," in text else ""
        try:
            repaired.append(fits.Card(keyword, value, comment[:40]), end=True)
        except (ValueError, fits.VerifyError):
            repaired.append(("COMMENT", image.strip()), end=True)
            notes.append(f"unparsable card {keyword} kept as a COMMENT")
            continue
        notes.append(f"{keyword} = {text.strip()} read as {value!r}{why}")
    return repaired, notes
