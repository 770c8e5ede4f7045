"""What would fix it: frames the pipeline cannot use, grouped by reason, with the rule to add.

Read-only: turns catalogue rows into short advice for the ``--once`` summary and the night
report. A group of unclassified frames that share a folder gets a ``path`` rule, else a common
file-name prefix a ``glob`` rule; the image type suggested is what their pixels say when they all
agree, else a placeholder the user chooses.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from ccdwatch.headers import DESCRIPTION, PRODUCT_REASON, ClassificationRule, PixelEvidence, pixel_verdict
from ccdwatch.models import Frame, FrameState


@dataclass(frozen=True)
class Advice:
    """One group of frames the pipeline does not use, and what would change that."""

    state: str
    reason: str
    count: int
    examples: tuple[str, ...]
    rule: str | None
    """A ``[[classify]]`` block that would classify them, or None (nothing to suggest)."""

    def lines(self) -> list[str]:
        head = f"{self.state.upper()} {self.count} frame(s) ({', '.join(self.examples)}): {self.reason}"
        if self.rule is None:
            return [head]
        return [head, "    to use them, add to the configuration:", *("      " + ln for ln in self.rule.splitlines())]


def _where(frame: Frame) -> str:
    return frame.relpath or os.path.basename(frame.path)


def _suggested_rule(frames: Sequence[Frame]) -> str:
    paths = [PurePosixPath(_where(f)) for f in frames]
    folders = {str(p.parent) for p in paths}
    if len(folders) == 1 and folders != {"."}:
        condition = f'path = "{folders.pop()}/**"'
    else:
        pattern = _name_pattern([p.name for p in paths])
        every = len(paths) == 1 or pattern != paths[0].name
        condition = f'glob = "{pattern}"' + ("" if every else "   # one such rule for each of these files")
    verdicts = {pixel_verdict(PixelEvidence.from_json((f.classification or {}).get("pixels")), f.exptime)[0]
                for f in frames}
    kind = verdicts.pop() if len(verdicts) == 1 and None not in verdicts else None
    typ = f'imagetyp = "{kind}"   # what their pixels look like' if kind else \
        'imagetyp = "bias" | "dark" | "flat" | "light" | "ignore"'
    return f"[[classify]]\n{condition}\n{typ}"


def group_reason(reason: str) -> str:
    """A frame's reason without what is particular to it (its file name, its pixels' level), so
    that the frames unused for the same reason make one group: twenty autofocus frames are one
    line, not twenty."""
    return DESCRIPTION.sub("", re.sub(r"file name '(?:[^'\\]|\\.)*'", "file name", reason))


def _name_pattern(names: Sequence[str]) -> str:
    """A glob every one of ``names`` matches, as telling as simple: their common prefix
    ('focus*'), else the longest word they share ('*focus*'), else the first name."""
    prefix = os.path.commonprefix(names).rstrip("0123456789_-. ")
    if len(prefix) >= 2 or len(names) == 1:
        return f"{prefix}*" if len(prefix) >= 2 else names[0]
    stems = [os.path.splitext(n)[0].lower() for n in names]
    shortest = min(stems, key=len)
    for size in range(len(shortest), 2, -1):
        for start in range(len(shortest) - size + 1):
            part = shortest[start:start + size]
            if any(c.isalpha() for c in part) and not any(c in part for c in "*?[]") \
                    and all(part in stem for stem in stems):
                return f"*{part}*"
    return names[0]


def unused_frames(frames: Iterable[Frame]) -> list[Advice]:
    """Unclassified and ignored frames grouped by folder and reason, largest group first. Masters
    and products found among the raw files get no rule: they are not to be used as raw frames."""
    groups: dict[tuple[str, str, str], list[Frame]] = defaultdict(list)
    for f in frames:
        if f.state not in (FrameState.UNCLASSIFIED, FrameState.IGNORED):
            continue
        folder = str(PurePosixPath(_where(f)).parent)
        groups[(f.state, folder, group_reason(f.state_reason or f.type_source or "no reason recorded"))].append(f)
    advice = []
    for (state, _, reason), members in groups.items():
        usable = state == FrameState.UNCLASSIFIED and PRODUCT_REASON not in reason
        rule = _suggested_rule(members) if usable else None
        names = tuple(os.path.basename(f.path) for f in members[:3]) + (("...",) if len(members) > 3 else ())
        advice.append(Advice(state, reason, len(members), names, rule))
    return sorted(advice, key=lambda a: (-a.count, a.state, a.reason))


def unmatched_rules(rules: Sequence[ClassificationRule], frames: Iterable[Frame]) -> list[str]:
    """The rules that decided no frame's type (nor ignored one), as warnings with the fix."""
    used = {(f.classification or {}).get("rule") for f in frames}
    out = []
    for index, rule in enumerate(rules, start=1):
        if index in used or (rule.imagetyp is None and not rule.ignore):
            continue  # a rule that only sets filter/object is not recorded per frame
        out.append(f"rule {index} ({rule.describe()}) matched no frame: glob matches the file name only, "
                   "path the path below the incoming directory (e.g. 'Flats/**')")
    return out
