"""``ccdwatch`` command line: thin commands over the library. Only this module configures logging."""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import OperationalError

from ccdwatch import __version__, records
from ccdwatch.advice import unmatched_rules, unused_frames
from ccdwatch.catalog import (
    Catalog,
    SchemaError,
    backup_sqlite,
    current_revision,
    head_revision,
    integrity,
    known_revision,
    last_ingest,
    make_engine,
    publish_snapshot,
    query_frames,
    sqlite_path,
    start_refusal,
    state_counts,
    upgrade,
    utcnow,
)
from ccdwatch.catalog.queries import (
    frames_in_state,
    frames_with_classification,
    night_type_counts,
    product_counts,
    query_masters,
    query_stacks,
)
from ccdwatch.catalog.sites import OwnershipError
from ccdwatch.config import Config, ConfigError, database_url, load_config, site_name
from ccdwatch.models import Frame, FrameState
from ccdwatch.records import FORMATS, emit, emit_named, frame_record, iso, master_record, stack_record
from ccdwatch.showing import cmd_show

if TYPE_CHECKING:
    from ccdwatch.pipeline import Pipeline

logger = logging.getLogger("ccdwatch")

EXIT_OWNED = 5  # another live daemon owns this site, incoming directory or products root
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), as shells report it

# ---------------------------------------------------------------------- commands
def _catalog(cfg: Config, *, writer: bool = False) -> Catalog:
    return Catalog(cfg.paths.database, writer=writer, create=writer)


#: Commands that read the catalogue of ``--site``: a site it does not know is said on stderr beside
#: the empty answer ('(no rows)'), and the report says it instead of "the catalogue holds no frames".
_SITE_QUERIES = ("frames", "masters", "stacks", "nights", "report", "status")


def _unknown_site(cfg: Config, args: argparse.Namespace) -> str | None:
    """Why ``--site`` names no site of the catalogue (with the sites it has), or None."""
    if not getattr(args, "site", None):
        return None
    from sqlalchemy import select

    with _catalog(cfg) as cat, cat.reader() as s:
        sites = sorted(x for x in s.scalars(select(Frame.site).distinct()) if x)
    if not sites or args.site in sites:
        return None
    return f"no frames of site {args.site!r}; this catalogue's sites: {', '.join(sites)}"


def cmd_watch(cfg: Config, args: argparse.Namespace) -> int:
    from ccdwatch.config import new_files_likely  # no numpy, no astropy: an idle --once stays light

    if not args.once or new_files_likely(cfg):  # --once: else once its scan finds files
        from ccdwatch.jobs import pool
        pool.warm_up(cfg.workers)  # first: its imports overlap with ours below
    from ccdwatch.daemon.watch import Watcher
    from ccdwatch.pipeline import Pipeline

    incoming = Path(cfg.paths.incoming).absolute()
    products = Path(cfg.paths.products).absolute()
    if products == incoming or incoming in products.parents:
        raise ConfigError(f"config key 'paths.products' ({products}) lies inside 'paths.incoming' ({incoming}); "
                          "ccdwatch never writes into the camera's directory - choose a products directory outside it")
    if args.once and not incoming.is_dir():
        raise ConfigError(f"config key 'paths.incoming': {incoming} is not a directory")
    from ccdwatch.catalog.sites import held

    with Catalog(cfg.paths.database, writer=True) as catalog, \
            held(catalog, site=site_name(cfg), incoming=str(incoming), products=str(products),
                 heartbeat_seconds=cfg.site.heartbeat_seconds, scheduler=cfg.workers.scheduler or None), \
            Pipeline(cfg, catalog, defer_sync=True) as pipeline:
        watcher = Watcher(cfg, pipeline)
        watcher.install_signal_handlers()
        if not args.once:
            return watcher.run()
        stats = watcher.run_once()
        site = site_name(cfg)  # the summary is this daemon's: others may share the catalogue
        with catalog.reader() as s:  # read everything inside: the session expires its objects at the end
            counts = state_counts(s, site=site)
            n = product_counts(s, site=site)
            waiting = frames_in_state(s, FrameState.WAITING, site=site)
            quarantined = frames_in_state(s, FrameState.QUARANTINED, site=site)
            classified = frames_with_classification(s, site=site)
            advice = [line for a in unused_frames(classified) for line in a.lines()]
            advice += unmatched_rules(cfg.classify, classified)
        print(f"ccdwatch {__version__}: scanned {incoming} (site {site})")
        print(f"  this run: {stats.ingested} ingested, {stats.duplicate} duplicates, "
              f"{stats.unchanged} unchanged, {stats.quarantined} quarantined")
        print(f"  catalogue: {sum(counts.values())} frames (" +
              ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")")
        print(f"  masters: {n['masters']}; calibrated lights: {n['calibrated']}; stacks: {n['stacks']}")
        reports = sorted((Path(cfg.paths.products) / "reports").glob("*/index.html"))
        for page in reports[-3:]:
            print(f"  night report: {page}")
        for fid, path, reason in waiting:
            print(f"  WAITING frame {fid} {Path(path).name}: {reason}")
        for _, path, reason in quarantined:
            print(f"  QUARANTINED {Path(path).name}: {reason}")
        for line in advice:
            print(f"  {line}")
        return 0




def _utc_time(text: str) -> datetime:
    """``--since``: an ISO date or date and time (UTC unless an offset is given), naive UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or time; e.g. 2024-03-10 or "
                                         "2024-03-10T22:00 (UTC) or 2024-03-10T22:00+02:00") from None
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo is not None else when


def _positive(text: str) -> int:
    """``--limit``: a whole number of rows, at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of rows (1 or more)")
    return int(text)


def cmd_frames(cfg: Config, args: argparse.Namespace) -> int:
    since = args.since
    with _catalog(cfg) as cat, cat.reader() as s:
        frames = query_frames(s, night=args.night, imagetyp=args.type, filter=args.filter, object=args.object,
                              state=args.state, since=since, limit=args.limit, site=args.site)
        rows = [frame_record(f) for f in frames]
    emit_named(rows, args.format, records.FRAME_COLUMNS)
    return 0


def cmd_status(cfg: Config, args: argparse.Namespace) -> int:
    from ccdwatch.catalog.sites import daemons

    with _catalog(cfg) as cat, cat.reader() as s:
        site = args.site  # None: the whole catalogue
        counts, last, n = state_counts(s, site=site), last_ingest(s, site=site), product_counts(s, site=site)
        running = [(d.site, d.host, d.pid, d.incoming, (utcnow() - d.heartbeat_at).total_seconds())
                   for d in daemons(s)]
    status_file = Path(cfg.paths.products) / "status.json"
    daemon = None
    if status_file.exists():
        try:
            daemon = json.loads(status_file.read_text())
        except (OSError, ValueError):
            daemon = None
    print(f"catalogue: {cat.url} (revision {cat.revision})")
    print(f"frames: {sum(counts.values())}  " + "  ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    print(f"masters: {n['masters']}  stacks: {n['stacks_all']}")
    print(f"last ingest: {iso(last) or 'never'}")
    if daemon:
        print(f"daemon: {daemon.get('status')} (queue {daemon.get('queue')}, updated {daemon.get('updated')})")
    for name, host, pid, incoming, age in running:
        print(f"site {name}: daemon pid {pid} on {host}, watching {incoming}, heartbeat {age:.0f} s ago")
    return 0


def cmd_masters(cfg: Config, args: argparse.Namespace) -> int:
    with _catalog(cfg) as cat, cat.reader() as s:
        masters = query_masters(s, kind=args.type, night=args.night, filter=args.filter, exptime=args.exptime,
                                site=args.site)
        rows = [master_record(m) for m in masters]
    emit_named(rows, args.format, records.MASTER_COLUMNS)
    return 0


def cmd_stacks(cfg: Config, args: argparse.Namespace) -> int:
    with _catalog(cfg) as cat, cat.reader() as s:
        stacks = query_stacks(s, night=args.night, target=args.target, filter=args.filter, all_versions=args.all,
                              site=args.site)
        rows = [stack_record(x) for x in stacks]
    emit_named(rows, args.format, records.STACK_COLUMNS)
    return 0


def cmd_nights(cfg: Config, args: argparse.Namespace) -> int:
    with _catalog(cfg) as cat, cat.reader() as s:
        rows = night_type_counts(s, site=args.site)
    by_night: dict[tuple[str, str], dict[str, Any]] = {}
    for night, site, typ, n in rows:
        rec = by_night.setdefault((night or "-", site or "-"), {"night": night, "site": site, "bias": 0, "dark": 0,
                                                                "flat": 0, "light": 0, "unknown": 0})
        rec[typ] = rec.get(typ, 0) + n
    emit([by_night[k] for k in sorted(by_night)], args.format,
         ("night", "site", "bias", "dark", "flat", "light", "unknown"))
    return 0


def _pipeline(cfg: Config) -> tuple[Catalog, Pipeline]:
    from ccdwatch.pipeline import Pipeline

    catalog = Catalog(cfg.paths.database, writer=True)
    return catalog, Pipeline(cfg, catalog)


def cmd_stack(cfg: Config, args: argparse.Namespace) -> int:
    catalog, pipe = _pipeline(cfg)
    with catalog, pipe:
        groups = [g for g in pipe.groups_of_night(args.night) if not args.group or args.group in str(g)]
        if not groups:
            print(f"no stack groups for night {args.night}", file=sys.stderr)
            return 1
        for g in groups:
            built = pipe.stack([g])
            print(f"{g}: " + (f"stack #{built[0]}" if built else "nothing new to stack"))
    return 0


def cmd_recalibrate(cfg: Config, args: argparse.Namespace) -> int:
    catalog, pipe = _pipeline(cfg)
    with catalog, pipe:
        n, considered = pipe.recalibrate(args.night)
        print(f"recalibrated {n} of {considered} lights")
    return 0


def cmd_reclassify(cfg: Config, args: argparse.Namespace) -> int:
    """Classify again with the current rules; redo what depended on a type that changed."""
    catalog, pipe = _pipeline(cfg)
    with catalog, pipe:
        done = pipe.reclassify(args.night, force=args.all)
        for fid, before, after in done.changed:
            print(f"frame {fid}: {before} -> {after}")
        print(f"reclassified {len(done.changed)} of {done.checked} frames checked; "
              f"{len(done.retired_masters)} masters and {len(done.retired_stacks)} stacks retired")
        if done.changed and not args.no_process:
            pipe.tick(final=True)
            print("masters, calibrations and stacks redone")
    return 0


def cmd_reprocess(cfg: Config, args: argparse.Namespace) -> int:
    """New versions of every master, calibration and stack of the selected nights (this site)."""
    from ccdwatch.pipeline.reprocess import Selection, reprocess

    selection = Selection(night=args.night, since=args.since, every=args.all)
    catalog, pipe = _pipeline(cfg)
    try:
        with catalog, pipe:
            done = reprocess(pipe, selection, progress=not args.no_progress and sys.stderr.isatty() or args.progress)
    except KeyboardInterrupt:
        print(f"ccdwatch: reprocessing {selection} interrupted; the same command continues it", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"reprocessed {selection} (site {pipe.ctx.site}): {done.masters} masters, {done.calibrated} "
          f"calibrated lights, {done.stacks} stacks in {done.seconds:.1f} s"
          + (f"; {done.skipped} already done by an earlier run" if done.skipped else ""))
    return 0


def cmd_retry(cfg: Config, args: argparse.Namespace) -> int:
    """Reset failed (or missing, quarantined, rejected) frames so that the daemon tries them again
    (rejected: flats refused for their level, lights left out of a stack, after a change of limits)."""
    catalog, pipe = _pipeline(cfg)
    with catalog, pipe:
        n = pipe.retry(FrameState(args.state), args.night)
    where = f" of night {args.night}" if args.night else ""
    print(f"reset {n} {args.state} frame(s){where}; the daemon tries them again at its next tick"
          + (" (files: at its next scan)" if args.state == FrameState.QUARANTINED else ""))
    return 0


def cmd_db(cfg: Config, args: argparse.Namespace) -> int:
    db = cfg.paths.database
    if args.db_command == "upgrade":
        old, new, backup = upgrade(db)
        print(f"catalogue upgraded from {old} to {new}" + (f"; backup at {backup}" if backup else ""))
        return 0
    if args.db_command == "check":
        engine = make_engine(db, writer=False)
        try:
            rev = current_revision(engine)
            head = head_revision()
            advice = "" if rev == head else (" - run `ccdwatch db upgrade`" if known_revision(engine, rev) else
                                             " - made by another program or a newer ccdwatch: use that one")
            ok = integrity(engine)
        finally:
            engine.dispose()
        print(f"catalogue: {database_url(db)}")
        print(f"revision: {rev} (head {head}){advice}")
        print(f"integrity: {ok}")
        return 0 if rev == head and ok in ("ok", "n/a") else 1
    if args.db_command in ("backup", "snapshot"):
        src = sqlite_path(database_url(db))
        if src is None:
            print("backups through the SQLite backup API need a SQLite catalogue", file=sys.stderr)
            return 1
        if args.db_command == "snapshot":
            dest = Path(args.out or cfg.paths.snapshot or src.with_name(f"{src.stem}-snapshot.db"))
            publish_snapshot(db, dest)
        else:
            dest = Path(args.out) if args.out else src.with_name(f"{src.stem}-{utcnow():%Y%m%dT%H%M%S}.db")
            backup_sqlite(src, dest)
        print(f"{args.db_command}: {dest} (integrity ok)")
        return 0
    raise AssertionError(args.db_command)


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    def common_options(parser: argparse.ArgumentParser, default: Any) -> None:
        # Accepted before or after the command: `ccdwatch --db X frames` = `ccdwatch frames --db X`.
        parser.add_argument("--config", default=default,
                            help="TOML configuration file (default: $CCDWATCH_CONFIG, else built-in defaults)")
        parser.add_argument("--incoming", default=default,
                            help="directory the camera writes FITS files into (overrides paths.incoming)")
        parser.add_argument("--products", default=default,
                            help="directory ccdwatch writes into (overrides paths.products)")
        parser.add_argument("--db", default=default,
                            help="catalogue: SQLAlchemy URL or SQLite file path (overrides paths.database)")
        parser.add_argument("--scheduler", default=default, metavar="tcp://HOST:PORT",
                            help="run the jobs on this Dask scheduler's workers (overrides workers.scheduler)")
        parser.add_argument("--site", default=default,
                            help="this daemon's site/telescope (overrides site.name); listings: only this site")
        parser.add_argument("-v", "--verbose", action="count", default=default if default is not None else 0,
                            help="more log output (-vv for debug)")
        parser.add_argument("-q", "--quiet", action="store_true", default=default if default is not None else False,
                            help="only warnings and errors")

    p = argparse.ArgumentParser(prog="ccdwatch", description="Unattended CCD reduction daemon and catalogue.")
    p.add_argument("--version", action="version", version=f"ccdwatch {__version__}")
    common_options(p, None)
    common = argparse.ArgumentParser(add_help=False)
    common_options(common, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_parser = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return _add_parser(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    w = sub.add_parser("watch", help="run the daemon (or --once: catch up, finish the night, exit)")
    w.add_argument("--once", action="store_true",
                   help="scan, process everything as if the night ended, print a summary, exit")
    w.set_defaults(func=cmd_watch)

    _listing_commands(sub)
    _processing_commands(sub)

    d = sub.add_parser("db", help="catalogue maintenance")
    dsub = d.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    dsub.add_parser("upgrade", help="back up the catalogue, then migrate it to this version's schema")
    dsub.add_parser("check", help="schema revision and integrity")
    for name, text in (("backup", "consistent copy via the SQLite backup API"),
                       ("snapshot", "publish a consistent read-only copy for readers")):
        b = dsub.add_parser(name, help=text)
        b.add_argument("--out", help="destination file")
    d.set_defaults(func=cmd_db)
    _extra_commands(sub)
    return p


def _format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="table")


def _listing_commands(sub: argparse._SubParsersAction) -> None:
    """The morning's read-only commands."""
    fmt = _format_option
    f = sub.add_parser("frames", help="list catalogued frames")
    f.add_argument("--night", help="night label YYYY-MM-DD (local date at the start of the night)")
    f.add_argument("--type", choices=("bias", "dark", "flat", "light", "unknown"))
    f.add_argument("--filter")
    f.add_argument("--object")
    f.add_argument("--state", choices=[str(state) for state in FrameState])
    f.add_argument("--since", type=_utc_time,
                   help="only frames observed at or after this ISO date/time (UTC unless an offset is given)")
    f.add_argument("--limit", type=_positive)
    fmt(f)
    f.set_defaults(func=cmd_frames)

    sh = sub.add_parser("show", help="one frame (id or path), master:ID, stack:ID or a product path, with history")
    sh.add_argument("ref")
    sh.set_defaults(func=cmd_show)

    st = sub.add_parser("status", help="counts by state, last ingest, daemon state")
    st.set_defaults(func=cmd_status)

    m = sub.add_parser("masters", help="list master calibrations")
    m.add_argument("--type", choices=("bias", "dark", "flat"))
    m.add_argument("--night")
    m.add_argument("--filter")
    m.add_argument("--exptime", type=float)
    fmt(m)
    m.set_defaults(func=cmd_masters)

    sk = sub.add_parser("stacks", help="list stacks")
    sk.add_argument("--night")
    sk.add_argument("--target")
    sk.add_argument("--filter")
    sk.add_argument("--all", action="store_true", help="include superseded versions")
    fmt(sk)
    sk.set_defaults(func=cmd_stacks)

    n = sub.add_parser("nights", help="nights with frame counts")
    fmt(n)
    n.set_defaults(func=cmd_nights)



def _processing_commands(sub: argparse._SubParsersAction) -> None:
    """Commands that (re)do work on the catalogue."""
    ss = sub.add_parser("stack", help="stack the groups of a night now")
    ss.add_argument("--night", required=True)
    ss.add_argument("--group", help="only groups whose key contains this text")
    ss.set_defaults(func=cmd_stack)

    rc = sub.add_parser("recalibrate", help="redo calibration (e.g. after a config change)")
    rc.add_argument("--night")
    rc.set_defaults(func=cmd_recalibrate)

    rc2 = sub.add_parser("reclassify", help="classify frames again with the current rules, redo what changed")
    rc2.add_argument("--night")
    rc2.add_argument("--all", action="store_true", help="every frame, not only those classified with other rules")
    rc2.add_argument("--no-process", action="store_true",
                     help="only reclassify; the daemon rebuilds masters, calibrations and stacks")
    rc2.set_defaults(func=cmd_reclassify)

    rp = sub.add_parser("reprocess", help="new versions of every master, calibration and stack of some nights "
                                          "(a rerun continues an interrupted campaign)")
    which = rp.add_mutually_exclusive_group(required=True)
    which.add_argument("--night", help="one night YYYY-MM-DD")
    which.add_argument("--since", help="every night from this one (YYYY-MM-DD) on")
    which.add_argument("--all", action="store_true", help="every night")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")
    rp.add_argument("--progress", action="store_true", help="a progress bar even when not on a terminal")
    rp.set_defaults(func=cmd_reprocess)

    rt = sub.add_parser("retry", help="give failed (or missing, quarantined, rejected) frames another try")
    rt.add_argument("--night")
    rt.add_argument("--state", default=str(FrameState.FAILED),
                    choices=[str(x) for x in (FrameState.FAILED, FrameState.MISSING, FrameState.QUARANTINED,
                                              FrameState.REJECTED)])
    rt.set_defaults(func=cmd_retry)



def _extra_commands(sub: argparse._SubParsersAction) -> None:
    """Commands implemented in their own modules, imported only when run: importing the
    report (and matplotlib, the synthetic camera) cost every command ~0.4 s of start-up."""
    p = sub.add_parser("report", help="write the HTML night report (summary, quality plots, stacks, masters)")
    p.add_argument("--night", help="night label YYYY-MM-DD (default: the most recent night; see `ccdwatch nights`)")
    p.add_argument("--out", help="directory for index.html and its img/ folder (default <products>/reports/<night>)")
    p.set_defaults(func=_lazy("ccdwatch.report", "cmd_report"))

    d = sub.add_parser(
        "demo", help="simulate a camera night into the incoming directory while the daemon reduces it, "
                     "then write the night report (about a minute)")
    d.add_argument("--dir", help="the demo's own directory (camera/, products/, ccdwatch.db; default "
                                 "./ccdwatch-demo); with --products/--db/--config given: the camera directory")
    d.add_argument("--speed", type=float, default=60.0,
                   help="how many times faster than real time the camera runs (default 60)")
    d.add_argument("--frames", type=int, default=8, help="light frames per filter (default 8)")
    d.add_argument("--seed", type=int, default=0, help="seed of the simulated sky and camera noise")
    d.set_defaults(func=_lazy("ccdwatch.demo", "cmd_demo"))


def _lazy(module: str, name: str) -> Callable[[Config, argparse.Namespace], int]:
    def run(cfg: Config, args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), name)(cfg, args)

    return run


class _JournalFormatter(logging.Formatter):
    """Under systemd, prefix each line with its syslog priority (<3> error ... <7> debug) so
    that ``journalctl -p warning`` works; the journal adds its own timestamps."""

    PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}

    def format(self, record: logging.LogRecord) -> str:
        prio = self.PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines())


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    for noisy in ("watchdog", "matplotlib", "PIL", "alembic", "numcodecs"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if verbose < 2:
        logging.getLogger("ccdwatch").setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_default = args.command not in ("watch",)
    configure_logging(args.verbose, args.quiet or (quiet_default and args.verbose == 0))
    try:
        cfg = load_config(args.config).with_overrides(incoming=args.incoming, products=args.products,
                                                      database=args.db, scheduler=args.scheduler, site=args.site)
        unknown = _unknown_site(cfg, args) if args.command in _SITE_QUERIES else None
        if unknown is not None:  # said, not refused (a script's empty answer stays one), but no report to write
            print(f"ccdwatch: {unknown}", file=sys.stderr)
            if args.command == "report":
                return 1
        return args.func(cfg, args)
    except ConfigError as exc:
        print(f"ccdwatch: configuration error: {exc}", file=sys.stderr)
        return 2
    except OwnershipError as exc:
        print(f"ccdwatch: refusing to start: {exc}", file=sys.stderr)
        return EXIT_OWNED
    except OperationalError as exc:  # the catalogue's server gone or its disk full: systemd starts it again
        refusal = start_refusal(exc, cfg.paths.database, int(cfg.watch.min_free_mb * 2**20))
        if refusal is None:
            raise
        print(f"ccdwatch: {refusal[1]}", file=sys.stderr)
        return refusal[0]
    except SchemaError as exc:
        print(f"ccdwatch: {exc}", file=sys.stderr)
        return 4
    except BrokenPipeError:
        return 0


def entry() -> None:
    """The ``ccdwatch`` console script: `main`, then exit.

    Freezing the heap first (`gc.freeze`) spares the interpreter's final collections a walk
    over everything numpy, astropy and SQLAlchemy left loaded: ~0.3 s of every command's
    exit. Files and the catalogue are closed by then; only the cyclic collector is skipped.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
