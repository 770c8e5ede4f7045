"""The report page (pure): :func:`render_html` turns the night's records and the names of its
pictures into one self-contained HTML page.

Every string that comes from a FITS header or a file name is escaped with :func:`esc` before it
reaches the page. The style sheet and the image check are the package's data files
``report.css`` and ``image_check.js``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from importlib import resources

import numpy as np

from ccdwatch import __version__
from ccdwatch.models import FrameState
from ccdwatch.report.figures import IMG_DIR, Images
from ccdwatch.report.rows import FrameRow, NightData
from ccdwatch.report.text import esc, fmt_duration, fmt_num, fmt_time, group_label

__all__ = ["CSS", "FRAME_HEADERS", "IMAGE_CHECK_JS", "render_html"]


def _package_text(name: str) -> str:
    return resources.files("ccdwatch.report").joinpath(name).read_text(encoding="utf-8")


#: The page's style sheet.
CSS = _package_text("report.css")
#: Lets a browser (or a test) see whether every picture loaded: sets data-images-ok on <body>.
IMAGE_CHECK_JS = _package_text("image_check.js")


def _tag(state: str) -> str:
    known = {str(x) for x in FrameState}
    return f'<span class="tag {state if state in known else "other"}">{esc(state)}</span>'


def _img(name: str | None, alt: str, *, cls: str = "") -> str:
    if not name:
        return f'<p class="muted">({esc(alt)}: no picture)</p>'
    return (f'<img src="{esc(IMG_DIR + "/" + name)}" alt="{esc(alt)}"'
            + (f' class="{esc(cls)}"' if cls else "") + ">")


def _table(headers: Sequence[str], rows: Iterable[tuple[Sequence[str], str]], *, numeric: Iterable[int] = ()) -> str:
    """A table from pre-escaped cells; ``rows`` are (cells, css class of the row)."""
    num = set(numeric)
    head = "".join(f'<th class="num">{esc(h)}</th>' if i in num else f"<th>{esc(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for cells, cls in rows:
        tds = "".join(f'<td class="num">{c}</td>' if i in num else f"<td>{c}</td>" for i, c in enumerate(cells))
        body.append(f'<tr class="{esc(cls)}">{tds}</tr>' if cls else f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _frame_cells(f: FrameRow) -> list[str]:
    return [
        str(f.id), f'<span title="{esc(f.paths[0] if f.paths else "")}">{esc(f.name)}</span>', esc(f.imagetyp),
        esc(fmt_time(f.date_obs)), esc(fmt_num(f.exptime)), esc(f.filter or "-"), esc(f.object or "-"),
        esc(fmt_num(f.ccd_temp)), esc(fmt_num(f.n_stars)), esc(fmt_num(f.fwhm, ".2f")),
        esc(fmt_num(f.sky, ".1f")), _tag(f.state),
        esc("; ".join(x for x in [f.state_reason or "", *f.header_warnings] if x)),
    ]


FRAME_HEADERS = ("id", "file", "type", "time (UTC)", "exp [s]", "filter", "object", "T [°C]", "stars",
                 "FWHM [px]", "sky [ADU]", "state", "notes")


def _sites(data: NightData) -> str:
    """Whose frames the report shows: ``site t1 · `` (or ``sites t1, t2 · ``)."""
    if not data.sites:
        return ""
    return ("site " if len(data.sites) == 1 else "sites ") + ", ".join(data.sites) + " · "


def _summary(data: NightData) -> str:
    lights = data.lights
    counts = Counter(f.imagetyp for f in data.frames.values())
    light_exp = sum(f.exptime or 0.0 for f in lights)
    stacked_exp = sum(g.stack.total_exposure for g in data.groups if g.stack is not None)
    targets = sorted({g.target for g in data.groups})
    filters = sorted({f.filter for f in lights if f.filter})
    times = [f.date_obs for f in data.frames.values() if f.date_obs is not None]
    cards = [
        (str(counts.get("light", 0)), "light frames"),
        (fmt_duration(light_exp), "total light exposure"),
        (fmt_duration(stacked_exp), "exposure in stacks"),
        (str(sum(1 for g in data.groups if g.stack is not None)), "stacks"),
        (f"{counts.get('bias', 0)} / {counts.get('dark', 0)} / {counts.get('flat', 0)}", "bias / dark / flat frames"),
        (str(len(data.masters)), "masters used or built"),
        (str(len(data.problems)), "problem files"),
    ]
    html_cards = "".join(f'<div class="card"><div class="big">{esc(v)}</div><div class="lbl">{esc(k)}</div></div>'
                         for v, k in cards)
    states = Counter(f.state for f in lights)
    instruments = sorted({f.instrument for f in data.frames.values() if f.instrument})
    telescopes = sorted({f.telescope for f in data.frames.values() if f.telescope})
    kv = [
        ("targets", ", ".join(targets) or "-"),
        ("filters", ", ".join(filters) or "-"),
        ("frames by type", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"),
        ("lights by state", ", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "-"),
        ("first / last frame", f"{fmt_time(min(times), date=True)} / {fmt_time(max(times), date=True)} UTC"
         if times else "-"),
        ("camera", ", ".join(instruments) or "-"),
        ("telescope", ", ".join(telescopes) or "-"),
    ]
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in kv)
    return (f'<section id="summary"><h2>Summary</h2><div class="cards">{html_cards}</div>'
            f'<dl class="kv">{dl}</dl></section>')


def _warnings(data: NightData) -> str:
    parts = ['<section id="warnings"><h2>Warnings</h2>']
    if data.warnings:
        parts.append('<div class="box warn"><ul>' + "".join(f"<li>{esc(w)}</li>" for w in data.warnings)
                     + "</ul></div>")
    else:
        parts.append('<div class="box good">Nothing needs your attention.</div>')
    if data.notes:
        parts.append('<div class="box note"><ul>' + "".join(f"<li>{esc(n)}</li>" for n in data.notes) + "</ul></div>")
    parts.append("</section>")
    return "".join(parts)


def _quality(data: NightData, images: Images) -> str:
    lights = [f for f in data.lights if f.fwhm is not None or f.n_stars is not None]
    body = _img(images.quality, "FWHM, sky, star count and CCD temperature over the night") if images.quality \
        else '<p class="muted">No light frames with a time to plot.</p>'
    stats = ""
    if lights:
        def med(attr: str) -> str:
            vals = [getattr(f, attr) for f in lights if getattr(f, attr) is not None]
            return fmt_num(float(np.median(vals)), ".3g") if vals else "-"
        stats = (f'<p class="muted">Median over {len(lights)} measured lights: FWHM {esc(med("fwhm"))} px, '
                 f'sky {esc(med("sky"))} ADU, {esc(med("n_stars"))} stars, elongation {esc(med("elongation"))}.</p>')
    return f'<section id="quality"><h2>Quality over the night</h2>{stats}<figure>{body}</figure></section>'


def _stacks(data: NightData, images: Images) -> str:
    parts = ['<section id="stacks"><h2>Stacks</h2>']
    if not data.groups:
        parts.append('<p class="muted">No light frames, so nothing to stack.</p>')
    for g in data.groups:
        st = g.stack
        parts.append(f'<div class="panel"><h3>{esc(group_label(g))}</h3><div class="split"><div>')
        if st is not None:
            kv = [("stack", f"#{st.id} version {st.version}, {st.method}"),
                  ("frames", f"{st.n_used} used, {st.n_rejected} rejected"),
                  ("total exposure", fmt_duration(st.total_exposure)),
                  ("alignment reference", f"frame {st.reference_frame_id}"),
                  ("file", st.path)]
            parts.append('<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in kv) + "</dl>")
        else:
            reasons = Counter((data.frames[i].state_reason or data.frames[i].state) for i in g.frame_ids
                              if i in data.frames)
            parts.append('<div class="box note">Not stacked: '
                         + esc("; ".join(f"{n} frame(s): {r}" for r, n in reasons.items())) + "</div>")
        parts.append("</div>")
        if st is not None:
            parts.append(f'<figure class="stackimg">{_img(images.stacks.get(st.id), f"stack of {group_label(g)}")}'
                         "</figure>")
        parts.append("</div>")
        if g.key in images.panels:
            name, caption = images.panels[g.key]
            parts.append(f"<figure>{_img(name, f'raw, calibrated and stacked {group_label(g)}')}"
                         f"<figcaption>One stretch for every panel: {esc(caption)} as it left the camera, "
                         "after calibration, and the stack.</figcaption></figure>")
        members = {m.frame_id: m for m in st.members} if st is not None else {}
        ids = list(dict.fromkeys([*g.frame_ids, *members]))
        rows = []
        for fid in ids:
            f = data.frames.get(fid)
            if f is None:
                continue
            m = members.get(fid)
            if m is not None:
                status, reason, cls = ("used", "", "") if m.used else ("rejected", m.reason or "", "rejected")
                if st is not None and fid == st.reference_frame_id:
                    reason = "alignment reference"
            else:
                status, reason = f.state, (f.state_reason or "not in the current stack version")
                cls = "waiting" if f.state == "waiting" else ""
            rows.append(([str(fid), esc(f.name), esc(fmt_time(f.date_obs)), esc(fmt_num(f.n_stars)),
                          esc(fmt_num(f.fwhm, ".2f")), esc(fmt_num(f.elongation, ".2f")),
                          esc(fmt_num(f.sky, ".1f")), esc(fmt_num(f.cosmic_rays)), _tag(status), esc(reason)], cls))
        n_rej = sum(1 for m in members.values() if not m.used)
        summary = f"{len(rows)} frames" + (f", {n_rej} rejected" if n_rej else "")
        parts.append(f"<details{' open' if n_rej else ''}><summary>members: {esc(summary)}</summary>"
                     + _table(("id", "file", "time (UTC)", "stars", "FWHM [px]", "elong.", "sky [ADU]", "cosmic rays",
                               "", "reason"), rows, numeric=(0, 3, 4, 5, 6, 7)) + "</details>")
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def _masters(data: NightData, images: Images) -> str:
    parts = ['<section id="masters"><h2>Masters</h2>']
    if not data.masters:
        parts.append('<p class="muted">No master calibration was built for or used by this night.</p>')
    parts.append('<div class="grid2">')
    for m in data.masters:
        title = f"master {m.kind}"
        if m.kind == "dark":
            title += f" {fmt_num(m.exptime)} s"
        if m.kind == "flat":
            title += f" {m.filter or 'no filter'}"
        badges = []
        if m.night != data.night:
            badges.append(f"from night {m.night}")
        if not m.latest:
            badges.append("superseded by a newer version")
        kv = [("id / version", f"#{m.id} v{m.version}"),
              ("inputs", f"{m.n_frames} frames, {m.method}"),
              ("mean level", fmt_num(m.mean, ".4f") if m.kind == "flat" else fmt_num(m.mean, ".1f") + " ADU"),
              ("noise", (fmt_num(None if m.noise is None else 100 * m.noise, ".2f") + " %") if m.kind == "flat"
               else fmt_num(m.noise, ".3g") + " ADU"),
              ("hot pixels", fmt_num(m.hot_pixels) if m.kind == "dark" else "-"),
              ("temperature", f"{fmt_num(m.ccd_temp)} °C" if m.ccd_temp is not None else "-"),
              ("taken", f"{fmt_time(m.date_mid, date=True)} UTC (middle)"),
              ("built on", ", ".join(x for x, y in (("bias", m.bias_subtracted), ("dark", m.dark_subtracted)) if y)
               or "raw frames"),
              ("used by", f"{m.used_by} lights of this night")]
        parts.append(f'<div class="panel"><h3>{esc(title)}'
                     + "".join(f' <span class="tag waiting">{esc(b)}</span>' for b in badges) + "</h3>"
                     + f"<figure>{_img(images.masters.get(m.id), title)}</figure>"
                     + '<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in kv) + "</dl>"
                     + f"<details><summary>input frames</summary><p>{esc(', '.join(m.inputs))}</p>"
                     + f"<p class=\"muted\">{esc(m.path)}</p></details></div>")
    parts.append("</div></section>")
    return "".join(parts)


def _coverage(data: NightData) -> str:
    lights = data.lights
    parts = ['<section id="calibration"><h2>Calibration coverage</h2>']
    if not lights:
        parts.append('<p class="muted">No lights.</p></section>')
        return "".join(parts)
    combos: Counter = Counter()
    for f in lights:
        c = data.calibrated.get(f.id)
        if c is not None:
            combos[(c.bias_id, c.dark_id, c.dark_scale, c.flat_id, c.partial)] += 1

    def mlabel(mid: int | None) -> str:
        m = data.master(mid)
        if mid is None:
            return "-"
        if m is None:
            return f"#{mid}"
        extra = f", {m.filter}" if m.filter else (f", {fmt_num(m.exptime)} s" if m.kind == "dark" else "")
        return f"#{mid} (night {m.night}{extra})"

    rows = [([esc(mlabel(b)), esc(mlabel(d)), esc("-" if s is None else f"x{s:.4g}"), esc(mlabel(fl)),
              esc("partial" if p else "complete"), str(n)], "waiting" if p else "")
            for (b, d, s, fl, p), n in sorted(combos.items(), key=lambda kv: -kv[1])]
    n_cal = sum(combos.values())
    parts.append(f"<p>{n_cal} of {len(lights)} lights are calibrated.</p>")
    if rows:
        parts.append(_table(("master bias", "master dark", "dark scale", "master flat", "", "lights"), rows,
                            numeric=(5,)))
    waiting = [f for f in lights if f.state == "waiting"]
    if waiting:
        by_reason: dict[str, list[FrameRow]] = defaultdict(list)
        for f in waiting:
            by_reason[f.state_reason or "waiting (no reason recorded yet)"].append(f)
        rows = [([esc(reason), str(len(fs)), esc(", ".join(sorted({x.filter or "-" for x in fs}))),
                  esc(", ".join(x.name for x in fs[:6]) + (" ..." if len(fs) > 6 else ""))], "waiting")
                for reason, fs in by_reason.items()]
        parts.append("<h3>Lights still waiting</h3>"
                     + _table(("waiting for", "lights", "filters", "files"), rows, numeric=(1,)))
    else:
        parts.append('<div class="box good">No light is waiting for a master.</div>')
    parts.append("</section>")
    return "".join(parts)


def _frames(data: NightData) -> str:
    frames = sorted(data.frames.values(), key=lambda f: (f.date_obs is None, f.date_obs or datetime.min, f.id))
    rows = [(_frame_cells(f), f.state if f.state in ("rejected", "waiting") else "") for f in frames]
    return ('<section id="frames"><h2>All frames</h2>'
            f"<details><summary>{len(frames)} frames of night {esc(data.night)}</summary>"
            + _table(FRAME_HEADERS, rows, numeric=(0, 4, 7, 8, 9, 10)) + "</details></section>")


def _unused(data: NightData) -> str:
    """The unclassified and ignored frames by reason, each group with the rule that would use it."""
    if not data.unused:
        return ""
    items = []
    for a in data.unused:
        names = ", ".join(a.examples)
        rule = (f"<br>to use them, add to the configuration:<pre>{esc(a.rule)}</pre>" if a.rule else "")
        items.append(f"<li>{esc(a.state)} {a.count} frame(s) ({esc(names)}): {esc(a.reason)}{rule}</li>")
    return f'<div class="box note"><p>Frames not used, by reason:</p><ul>{"".join(items)}</ul></div>'


def _problems(data: NightData) -> str:
    parts = ['<section id="problems"><h2>Problem files</h2>', _unused(data)]
    if not data.problems:
        parts.append('<div class="box good">No file was quarantined, failed or left unclassified.</div></section>')
        return "".join(parts)
    rows = [([str(p.id), f'<span title="{esc(p.paths[0] if p.paths else "")}">{esc(p.name)}</span>', _tag(p.state),
              esc(p.state_reason or "-"), esc(fmt_time(p.created_at, date=True))], "rejected")
            for p in data.problems]
    parts.append("<p>These files were not used. ccdwatch never modifies the camera's files; fix or remove them "
                 "there.</p>" + _table(("id", "file", "state", "reason", "catalogued (UTC)"), rows, numeric=(0,)))
    parts.append("</section>")
    return "".join(parts)


def render_html(data: NightData, images: Images) -> str:
    """The report page as text; every catalogue- or header-derived string is escaped."""
    title = f"ccdwatch - night {data.night}"
    targets = ", ".join(sorted({g.target for g in data.groups})) or "no targets"
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in (
        ("summary", "Summary"), ("warnings", f"Warnings ({len(data.warnings)})"), ("quality", "Quality"),
        ("stacks", "Stacks"), ("masters", "Masters"), ("calibration", "Calibration coverage"),
        ("frames", "All frames"), ("problems", f"Problem files ({len(data.problems)})")))
    body = "".join([
        _summary(data), _warnings(data), _quality(data, images), _stacks(data, images), _masters(data, images),
        _coverage(data), _frames(data), _problems(data),
    ])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta name=\"generator\" content=\"ccdwatch " + esc(__version__) + "\">"
        "<link rel=\"icon\" href=\"data:,\">"
        f"<title>{esc(title)}</title><style>\n{CSS}</style></head>\n<body>"
        f'<header class="top"><h1>Night {esc(data.night)}</h1>'
        f'<div class="sub">{esc(_sites(data) + targets)} · '
        f'report generated {esc(fmt_time(data.generated, date=True))} UTC '
        f"by ccdwatch {esc(__version__)}</div></header>"
        f"<nav>{nav}</nav><main>{body}</main>"
        f"<footer>ccdwatch {esc(__version__)} · the page and its img/ folder can be copied anywhere</footer>"
        f"<script>\n{IMAGE_CHECK_JS}</script></body></html>\n"
    )
