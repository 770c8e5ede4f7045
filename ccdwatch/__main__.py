"""``ccdwatch`` (the console script) and ``python -m ccdwatch``: the command line, with the
workers' fork server started before the command line loads.

`ccdwatch.cli` imports SQLAlchemy and the catalogue (~0.35 s) before it can start the workers of
``watch``, and the first job waits for the fork server's own imports (numpy, astropy, sep, OpenCV:
~1.3 s). Started here, from a look at the arguments and the configuration only, those imports begin
that much sooner, on the other core. Anything unusual (another command, arguments that do not
parse, a configuration that does not load) starts nothing here: `ccdwatch.cli` then does what it
always does, and says what is wrong.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

#: ``watch``'s options that take a value (`ccdwatch.cli.build_parser`), before or after the command.
_VALUED = ("--config", "--incoming", "--products", "--db", "--scheduler", "--site")


def start_workers_early(argv: Sequence[str]) -> bool:
    """Start the local workers' fork server if ``argv`` is a ``watch`` that will run jobs on them
    (as `ccdwatch.cli.cmd_watch` decides: ``--once`` only when the incoming folder holds a FITS
    name; not with a Dask scheduler). Returns whether it was started."""
    if "watch" not in argv:
        return False
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    for option in _VALUED:
        parser.add_argument(option)
    parser.add_argument("--once", action="store_true")
    parser.add_argument("-v", "--verbose", action="count")
    parser.add_argument("-q", "--quiet", action="store_true")
    try:
        args, rest = parser.parse_known_args(list(argv))
    except (argparse.ArgumentError, SystemExit):
        return False
    if rest != ["watch"]:  # anything else (--help, a typo): the command line's business
        return False
    try:
        from ccdwatch.config import load_config

        cfg = load_config(args.config).with_overrides(incoming=args.incoming, products=args.products,
                                                      database=args.db, scheduler=args.scheduler, site=args.site)
    except Exception:  # noqa: BLE001 - `ccdwatch.cli` loads it again and reports the error
        return False
    from ccdwatch.config import new_files_likely
    from ccdwatch.jobs import forkserver

    if cfg.workers.processes <= 0 or cfg.workers.scheduler:
        return False
    if args.once and not new_files_likely(cfg):  # an idle --once stays light
        return False
    _stop_cleanly_until_watching()  # from before the server's temporary directory exists
    forkserver.start()
    return True


def _stop_cleanly_until_watching() -> None:
    """SIGTERM before the daemon installs its own handler (`Watcher.install_signal_handlers`) exits
    0, as its stop does, through the exit handlers: killed by the signal itself, the daemon left
    the fork server's temporary directory (its socket and ready file) in /tmp."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)


def entry() -> None:
    """The console script."""
    start_workers_early(sys.argv[1:])
    from ccdwatch.jobs.forkserver import frozen_imports

    with frozen_imports():
        from ccdwatch.cli import entry as cli_entry
    cli_entry()


if __name__ == "__main__":
    entry()
