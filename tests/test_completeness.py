"""A file is catalogued only once completely written, whatever the writer does.

Windows/Samba copies and ``rsync --preallocate`` give a file its final size first and fill it
later: the header is valid and the size right long before the last pixel is on disk. These tests
write such files (to the live daemon, under both observers) and check the tail rule of
:mod:`ccdwatch.fitsio.unwritten` on synthetic frames, real zero tails included.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from ccdwatch import synth
from ccdwatch.catalog import Catalog
from ccdwatch.daemon.watch import Watcher
from ccdwatch.fitsio import BLOCK_SIZE, RejectedFile, read_raw
from ccdwatch.fitsio.unwritten import zero_tail
from ccdwatch.pipeline import Pipeline

from .conftest import make_config
from .test_daemon import CAMERA, Daemon, frame_bytes

GRACE = 300.0  # s, the default watch.fallback_settle_seconds
PAUSE = 1.5  # s between a preallocating writer's steps: longer than the daemon's settle time (0.5 s)


def sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def preallocated(blob: bytes, written: int) -> bytes:
    """What a preallocating writer leaves on disk after its first ``written`` bytes."""
    return blob[:written] + bytes(len(blob) - written)


def put(path: Path, blob: bytes) -> float:
    """Write ``blob`` to ``path``; return its mtime (s)."""
    path.write_bytes(blob)
    return os.stat(path).st_mtime


def signed_frame_bytes(tmp: Path, *, zero_rows: int, dtype: str = "int16") -> tuple[bytes, np.ndarray]:
    """A complete bias stored without BZERO (a signed camera, or float), whose last ``zero_rows``
    rows are exactly 0, as a camera with a zero-padded edge writes them."""
    data = synth.expose(CAMERA, kind="bias", exptime=0.0, rng=np.random.default_rng(5)).astype(dtype)
    if zero_rows:
        data[-zero_rows:] = 0
    hdu = fits.PrimaryHDU(data)
    for key, value in synth.frame_header(CAMERA, kind="bias", exptime=0.0,
                                         date_obs=datetime(2024, 1, 1, 21, 0, 0)).items():
        hdu.header[key] = value
    path = tmp / "signed_src.fits"
    hdu.writeto(path, overwrite=True)
    blob = path.read_bytes()
    path.unlink()
    return blob, data


# ------------------------------------------------------------------------------ the tail rule
@pytest.mark.parametrize("written", [0, 1000, BLOCK_SIZE, 8000, -BLOCK_SIZE - 1])
def test_a_preallocated_file_is_incomplete_while_recent_and_read_as_it_is_after_the_grace(tmp_path, written):
    blob = frame_bytes(tmp_path)
    assert len(blob) % BLOCK_SIZE == 0 and len(blob) >= 5 * BLOCK_SIZE
    written %= len(blob)
    path = tmp_path / "prealloc.fits"
    mtime = put(path, preallocated(blob, written))
    with pytest.raises(RejectedFile) as info:
        read_raw(path, unwritten_grace=GRACE, now=mtime + 0.5)
    assert info.value.reason == "incomplete-tail" and info.value.transient
    assert f"of {len(blob)} are zero bytes" in info.value.message
    # once unmodified for the grace it is what it is: refused, or read with its zeros
    late = mtime + GRACE + 1
    header_bytes = (blob.index(b"END" + b" " * 77) // BLOCK_SIZE + 1) * BLOCK_SIZE
    if written < header_bytes:  # the header is not all there
        with pytest.raises(RejectedFile) as info:
            read_raw(path, unwritten_grace=GRACE, now=late)
        assert info.value.reason in ("not-fits", "truncated-header", "bad-header")
    else:
        raw = read_raw(path, unwritten_grace=GRACE, now=late)
        assert raw.sha256 == sha(preallocated(blob, written))
        assert (raw.data[-1] == 32768).all()  # unwritten = stored zeros = BZERO: the rule's limit
    # the complete file, just written, is read at once
    mtime = put(path, blob)
    raw = read_raw(path, unwritten_grace=GRACE, now=mtime + 0.5)
    assert raw.sha256 == sha(blob)


def test_the_check_is_off_unless_asked_for(tmp_path):
    """Catalogued frames read back for calibration (load_raw) never meet the rule."""
    blob = frame_bytes(tmp_path)
    path = tmp_path / "half.fits"
    put(path, preallocated(blob, len(blob) // 2 // BLOCK_SIZE * BLOCK_SIZE))
    assert read_raw(path).sha256 == sha(path.read_bytes())
    assert read_raw(path, unwritten_grace=0.0, now=time.time()).data is not None


def test_a_complete_frame_whose_last_rows_are_zero_is_held_for_the_grace_only(tmp_path):
    """16 zero rows of a signed 96-pixel-wide frame (3072 bytes) zero the file's last block:
    held while recent, read unchanged once the grace has passed."""
    blob, data = signed_frame_bytes(tmp_path, zero_rows=16)
    path = tmp_path / "edge.fits"
    mtime = put(path, blob)
    assert not blob[-BLOCK_SIZE:].strip(b"\0")
    with pytest.raises(RejectedFile) as info:
        read_raw(path, unwritten_grace=GRACE, now=mtime + 10)
    assert info.value.reason == "incomplete-tail"
    raw = read_raw(path, unwritten_grace=GRACE, now=mtime + GRACE)
    assert raw.sha256 == sha(blob)
    np.testing.assert_array_equal(raw.data, data)


@pytest.mark.parametrize(("dtype", "zero_rows"), [("int16", 3), ("float32", 1)])
def test_zero_rows_short_of_a_whole_block_are_not_held(tmp_path, dtype, zero_rows):
    blob, data = signed_frame_bytes(tmp_path, zero_rows=zero_rows, dtype=dtype)
    path = tmp_path / "short_zero_tail.fits"
    mtime = put(path, blob)
    run = zero_tail(lambda offset, n: blob[offset:offset + n], len(blob))
    assert zero_rows * data.shape[1] * data.itemsize < run < BLOCK_SIZE  # the zero rows and the padding
    raw = read_raw(path, unwritten_grace=GRACE, now=mtime)
    np.testing.assert_array_equal(raw.data, data)


def test_an_unsigned_camera_frame_with_zero_adu_rows_is_not_held(tmp_path):
    """BZERO = 32768 stores 0 ADU as 0x8000: the usual camera never writes a zero block."""
    data = synth.quantise(synth.expose(CAMERA, kind="bias", exptime=0.0, rng=np.random.default_rng(6)))
    data[-32:] = 0
    hdr = synth.frame_header(CAMERA, kind="bias", exptime=0.0, date_obs=datetime(2024, 1, 1, 21, 5, 0))
    path = synth.write_fits(tmp_path / "u16.fits", data, hdr)
    raw = read_raw(path, unwritten_grace=GRACE, now=os.stat(path).st_mtime)
    np.testing.assert_array_equal(raw.data, data)


def test_once_mode_holds_a_zero_tail_for_the_grace_then_catalogues_it_once(tmp_path):
    """``watch --once`` neither quarantines (held for ever: the file never changes again) nor
    catalogues at once a recent file with a zero tail; it waits out the grace, then ingests."""
    grace = 2.0
    cfg = make_config(tmp_path, workers={"processes": 0}, watch={"fallback_settle_seconds": grace,
                                                                 "settle_seconds": 0.3, "rescan_interval": 0.0})
    blob, _ = signed_frame_bytes(tmp_path, zero_rows=16)
    mtime = put(cfg.paths.incoming / "edge.fits", blob)
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        stats = Watcher(cfg, pipe, progress=False).run_once()
    done = time.time()
    assert stats.ingested == 1 and stats.quarantined == 0 and stats.incomplete >= 1
    assert done - mtime >= grace
    con = sqlite3.connect(cfg.paths.database)
    try:
        rows = con.execute("SELECT sha256, state FROM frames").fetchall()
    finally:
        con.close()
    assert rows == [(sha(blob), "ingested")]


# ------------------------------------------------------------------------------ readiness
def test_inotify_waits_for_the_close_and_falls_back_only_after_minutes(tmp_path):
    """On inotify a created/modified file is not ready when merely stable; a close or a move is
    ready at once; a writer that never closes is given up on after the fallback."""
    cfg = make_config(tmp_path, workers={"processes": 0})
    settle, fallback = cfg.watch.settle_seconds, cfg.watch.fallback_settle_seconds
    assert fallback >= 60 * settle
    inc = cfg.paths.incoming
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        w = Watcher(cfg, pipe, progress=False)
        w.closes_expected = True  # as while an inotify observer runs
        t0 = time.time()
        for name in ("never_closed.fits", "closed.fits"):
            put(inc / name, b"x" * 100)
            w.changed(str(inc / name), now=t0)
        w.promote_settled(now=t0 + 10 * settle)
        assert not w.ready and len(w.pending) == 2
        w.mark_ready(str(inc / "closed.fits"))  # its close event
        assert list(w.ready) == [str(inc / "closed.fits")]
        w.ready.clear()
        w.promote_settled(now=t0 + fallback + 1)
        assert list(w.ready) == [str(inc / "never_closed.fits")]
        # a scan (start-up: events may never come) settles as before; an old file is ready at once
        w.ready.clear()
        for name in ("never_closed.fits", "closed.fits"):
            (inc / name).unlink()
        put(inc / "found.fits", b"y" * 100)
        old = inc / "old.fits"
        put(old, b"z" * 100)
        os.utime(old, (t0 - 3600, t0 - 3600))
        w.scan()
        assert list(w.ready) == [str(old)]
        # watchdog reports the files of a new directory as created: that does not make them wait
        w.changed(str(inc / "found.fits"))
        w.promote_settled(now=time.time() + settle + 0.01)
        assert list(w.ready) == [str(old), str(inc / "found.fits")]
        # ... but a write seen by inotify does: its close will come
        w.ready.clear()
        found = str(inc / "found.fits")
        w.pending.clear()
        t1 = put(inc / "found.fits", b"w" * 100)
        w.changed(found, from_scan=True, now=t1)
        w.changed(found, writing=True, now=t1)
        w.promote_settled(now=t1 + 10 * settle)
        assert not w.ready and not w.pending[found].quick


# ------------------------------------------------------------------------------ live daemon
def write_preallocated(path: Path, blob: bytes, *, close_between: bool) -> float:
    """Give ``path`` its final size, then fill it front to back in three chunks with pauses
    longer than the settle time: ``rsync --preallocate`` (fallocate, one open descriptor) or a
    Samba copy that closes between chunks (ftruncate, open/close per chunk). Returns the time
    of the last close."""
    n = len(blob)
    cuts = [0, n // 3, 2 * n // 3, n]
    if close_between:
        with open(path, "wb") as fh:
            fh.truncate(n)
        time.sleep(PAUSE)
        for a, b in zip(cuts, cuts[1:], strict=False):
            with open(path, "r+b") as fh:
                fh.seek(a)
                fh.write(blob[a:b])
            if b < n:
                time.sleep(PAUSE)
        return time.time()
    with open(path, "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, n)
        time.sleep(PAUSE)
        for a, b in zip(cuts, cuts[1:], strict=False):
            fh.seek(a)
            fh.write(blob[a:b])
            fh.flush()
            if b < n:
                time.sleep(PAUSE)
    return time.time()


@pytest.mark.slow  # ~9 s each on an idle machine: three pauses longer than the settle time
@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_preallocating_writers_give_one_frame_each_with_the_complete_content(tmp_path, observer):
    d = Daemon(tmp_path, extra=f"observer = '{observer}'\npoll_interval = 0.2\n")
    try:
        d.start()
        blobs = {"rsync.fits": frame_bytes(tmp_path, seed=1), "samba.fits": frame_bytes(tmp_path, seed=2)}
        closed: dict[str, float] = {}

        def writer(name: str) -> None:
            closed[name] = write_preallocated(d.incoming / name, blobs[name], close_between=name == "samba.fits")

        threads = [threading.Thread(target=writer, args=(name,)) for name in blobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        expected = sorted((str(d.incoming / name), sha(blob), "ingested") for name, blob in blobs.items())
        d.wait_for("SELECT path, sha256, state FROM frames ORDER BY path", expected, timeout=30)
        latency = time.time() - max(closed.values())
        time.sleep(1.5)  # nothing more comes: no second frame, no quarantine, nothing superseded
        assert d.query("SELECT count(*) FROM frames") == [(2,)]
        assert d.query("SELECT kind, count(*) FROM events GROUP BY kind") == [("ingested", 2)]
        assert d.stop() == 0
        log = (tmp_path / "daemon.log").read_text()
        waited = {name for name in blobs if f"waiting: {d.incoming / name}:" in log}
        if observer == "inotify":  # read before its close only when the writer closed in between
            assert waited == {"samba.fits"}, log
            assert latency < 3.0, f"close -> catalogued took {latency:.2f} s"
        else:  # the polling observer read both partial files: the tail check held them back
            assert waited == set(blobs), log
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
