"""Calibrated lights not waited on to reach the disk, and a crash of the machine (issue 17).

The daemon commits a calibrated light's row without fsyncing its product; a marker in the
products root, written first, names the boot. A machine that went down (another boot id) has
every product committed since the marker checked against its row: a lost one is calibrated
again, to the same pixels. A marker of this boot is settled (fsynced, removed) once old enough.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from ccdwatch import synth
from ccdwatch.catalog import Catalog
from ccdwatch.fitsio import write_product
from ccdwatch.models import Calibrated, Event, Frame, FrameState
from ccdwatch.pipeline import Pipeline, durability

from .helpers import make_config

CAMERA = synth.Camera(shape=(96, 128))


def test_unsynced_write_skips_fsync_for_a_new_path_only(tmp_path, monkeypatch):
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "p" / "a.fits"
    sha = write_product(path, data, sync=False)
    assert synced == []
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    np.testing.assert_array_equal(fits.getdata(path), data)
    write_product(path, data + 1, sync=False)  # a rename over a file: its bytes reach the disk first
    assert len(synced) == 2  # the file and its directory
    write_product(tmp_path / "p" / "b.fits", data)
    assert len(synced) == 4


@pytest.fixture(scope="module")
def staging(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("staging")
    synth.make_night(d, camera=CAMERA, seed=5, n_bias=3, n_dark=3, n_flat=3, filters=("V",), n_light=3,
                     n_stars=40)
    return d


@pytest.fixture
def boot(tmp_path, monkeypatch) -> Path:
    source = tmp_path / "boot_id"
    source.write_text("boot-a\n")
    monkeypatch.setattr(durability, "BOOT_ID", source)
    return source


def run_night(cfg, *, clock=None) -> None:
    cat = Catalog(cfg.paths.database)
    kwargs = {"clock": clock} if clock else {}
    with Pipeline(cfg, cat, defer_sync=True, **kwargs) as pipe:
        pipe.recover()
        for p in sorted(Path(cfg.paths.incoming).iterdir()):
            pipe.handle(p)
        pipe.finish()
    cat.close()


def calibrated(cfg) -> dict[str, tuple[int, str, str]]:
    """Raw file name -> (version, path, sha256) of each light's current calibrated product."""
    cat = Catalog(cfg.paths.database)
    with cat.reader() as s:
        rows = s.execute(select(Frame.path, Calibrated.version, Calibrated.path, Calibrated.sha256)
                         .join(Calibrated, Calibrated.frame_id == Frame.id).where(Calibrated.current)).all()
    cat.close()
    return {Path(f).name: (v, p, sha) for f, v, p, sha in rows}


@pytest.fixture
def night(tmp_path, staging, boot):
    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False})
    for p in sorted(staging.iterdir()):
        shutil.copy2(p, cfg.paths.incoming / p.name)
    run_night(cfg)
    return cfg


def test_the_marker_names_the_boot_before_any_unsynced_row(night):
    marker = json.loads((night.paths.products / durability.MARKER).read_text())
    assert marker["boot"] == "boot-a"
    products = calibrated(night)
    assert len(products) == 3
    cat = Catalog(night.paths.database)
    with cat.reader() as s:
        first = min(s.scalars(select(Calibrated.created_at)))
        first_id = min(s.scalars(select(Calibrated.id)))
    cat.close()
    assert durability._since(marker) <= first
    assert marker["after_id"] == first_id - 1  # the rows after it: every calibrated light of the night


def damage_all(cfg) -> dict[str, tuple[int, str, str]]:
    """Every current calibrated product left empty (its pages never reached the disk); what they were."""
    before = calibrated(cfg)
    for _, path, _ in before.values():
        Path(path).write_bytes(b"")
    return before


def test_a_clock_stepped_back_after_the_marker_hides_no_row_from_the_check(tmp_path, staging, boot):
    """NTP steps the clock back 10 minutes after the marker is written (simulated: the pipeline's
    clock, which times the marker, runs 10 minutes ahead of the rows' times), then the power goes:
    every row committed after the marker is still checked, by id."""
    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False})
    for p in sorted(staging.iterdir()):
        shutil.copy2(p, cfg.paths.incoming / p.name)
    run_night(cfg, clock=lambda: time.time() + 600)
    before = damage_all(cfg)
    boot.write_text("boot-b\n")
    run_night(cfg)
    after = calibrated(cfg)
    assert sorted(after) == sorted(before)
    for name, (version, path, sha) in after.items():
        assert version == before[name][0] + 1, name  # calibrated again, not left pointing at an empty file
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha


def test_a_marker_settled_after_a_clock_step_back_still_syncs_every_product(tmp_path, staging, boot, monkeypatch):
    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False})
    for p in sorted(staging.iterdir()):
        shutil.copy2(p, cfg.paths.incoming / p.name)
    run_night(cfg, clock=lambda: time.time() + 600)
    products = {Path(path) for _, path, _ in calibrated(cfg).values()}
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    run_night(cfg, clock=lambda: time.time() + 600 + durability.SETTLED_AFTER + 60)  # old enough: settled
    assert not (cfg.paths.products / durability.MARKER).exists()
    assert products <= {Path(p) for p in synced}


def test_a_marker_of_the_previous_version_is_read_by_its_time(night, boot):
    """A marker written before the row ids were recorded (no ``after_id``): the rows since its time."""
    marker = night.paths.products / durability.MARKER
    data = json.loads(marker.read_text())
    marker.write_text(json.dumps({"boot": data["boot"], "since": data["since"]}))
    before = damage_all(night)
    boot.write_text("boot-b\n")
    run_night(night)
    after = calibrated(night)
    assert all(after[n][0] == before[n][0] + 1 for n in before)


def test_a_crash_of_the_machine_recalibrates_what_did_not_reach_the_disk(night, boot):
    before = calibrated(night)
    names = sorted(before)
    pixels = {n: fits.getdata(before[n][1], memmap=False) for n in names}
    Path(before[names[0]][1]).write_bytes(b"\0" * 2880)  # the kernel died before writing it back
    Path(before[names[1]][1]).unlink()  # its directory entry never reached the disk
    boot.write_text("boot-b\n")
    run_night(night)
    after = calibrated(night)
    for n in names[:2]:
        version, path, sha = after[n]
        assert version == before[n][0] + 1
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha
        np.testing.assert_array_equal(fits.getdata(path, memmap=False), pixels[n])  # calibrated again: the same pixels
        assert not Path(before[n][1]).exists()  # the damaged file is gone
    assert after[names[2]] == before[names[2]]  # intact: left as it was
    cat = Catalog(night.paths.database)
    with cat.reader() as s:
        lost = s.execute(select(Frame.path, Event.detail).join(Event, Event.frame_id == Frame.id)
                         .where(Event.kind == "lost")).all()
        states = set(s.scalars(select(Frame.state).where(Frame.imagetyp == "light")))
    cat.close()
    assert sorted(Path(p).name for p, _ in lost) == names[:2]
    assert all("after the machine went down" in d for _, d in lost)
    assert states <= {FrameState.CALIBRATED, FrameState.STACKED}
    marker = json.loads((night.paths.products / durability.MARKER).read_text())
    assert marker["boot"] == "boot-b"  # the old marker settled; the new products have their own


def test_a_marker_of_this_boot_is_trusted_then_settled_once_old(night, monkeypatch):
    before = calibrated(night)
    marker = night.paths.products / durability.MARKER
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    run_night(night)  # moments later, the same boot: nothing to check, nothing to sync yet
    assert marker.exists() and synced == []
    assert calibrated(night) == before
    since = durability._since(json.loads(marker.read_text())).timestamp()
    later = since + durability.SETTLED_AFTER + 60
    run_night(night, clock=lambda: later)  # a minute on: written back by now, fsynced cheaply
    assert not marker.exists()
    assert len(synced) >= len(before)
    assert calibrated(night) == before


def test_only_the_daemon_defers(tmp_path, boot):
    cfg = make_config(tmp_path, workers={"processes": 0})
    cat = Catalog(cfg.paths.database)
    with Pipeline(cfg, cat) as pipe:  # the CLI's commands
        assert pipe.ctx.unsynced is None
    with Pipeline(cfg, cat, defer_sync=True) as pipe:
        assert pipe.ctx.unsynced is not None
    clustered = make_config(tmp_path, workers={"processes": 0, "scheduler": "tcp://127.0.0.1:1"})
    with Pipeline(clustered, cat, defer_sync=True) as pipe:  # a Dask worker syncs its own writes
        assert pipe.ctx.unsynced is None
    cat.close()
