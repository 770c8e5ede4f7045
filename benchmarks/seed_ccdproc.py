"""The seed-style reduction a teaching notebook would write with ccdproc and astroalign.

Run as ``python -m benchmarks.seed_ccdproc RAW_DIR OUT_DIR``. Written the way the astropy CCD
Data Reduction Guide teaches it (ImageFileCollection to select frames, ``ccdproc.combine`` with
sigma clipping for the masters, ``subtract_bias`` + ``subtract_dark(scale=True)`` +
``flat_correct`` via ``ccd_process`` for each light, ``astroalign.register`` onto the first light
of each filter, mean stack), idiomatically and without deliberate slowness.
"""

from __future__ import annotations

import sys
from pathlib import Path

import astroalign as aa
import ccdproc as ccdp
import numpy as np
from astropy import units as u
from astropy.nddata import CCDData
from astropy.stats import mad_std


def inv_median(a):
    return 1 / np.median(a)


def main(raw: str, out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ifc = ccdp.ImageFileCollection(raw)

    # master bias
    biases = ifc.files_filtered(imagetyp="Bias Frame", include_path=True)
    master_bias = ccdp.combine(biases, method="average", sigma_clip=True, sigma_clip_low_thresh=5,
                               sigma_clip_high_thresh=5, sigma_clip_func=np.ma.median,
                               sigma_clip_dev_func=mad_std, mem_limit=350e6, unit="adu")
    master_bias.meta["combined"] = True
    master_bias.write(out_dir / "master_bias.fits", overwrite=True)

    # master dark (bias subtracted, so it can be scaled to the lights' exposure)
    dark_files = ifc.files_filtered(imagetyp="Dark Frame", include_path=True)
    darks = [ccdp.subtract_bias(CCDData.read(f, unit="adu"), master_bias) for f in dark_files]
    master_dark = ccdp.combine(darks, method="average", sigma_clip=True, sigma_clip_low_thresh=5,
                               sigma_clip_high_thresh=5, sigma_clip_func=np.ma.median,
                               sigma_clip_dev_func=mad_std, mem_limit=350e6)
    master_dark.meta["combined"] = True
    master_dark.write(out_dir / "master_dark.fits", overwrite=True)

    # master flats, one per filter
    master_flats = {}
    for filt in sorted(set(ifc.values("filter", unique=True)) - {None}):
        flat_files = ifc.files_filtered(imagetyp="Flat Field", filter=filt, include_path=True)
        if not flat_files:
            continue
        flats = []
        for f in flat_files:
            ccd = CCDData.read(f, unit="adu")
            ccd = ccdp.subtract_bias(ccd, master_bias)
            ccd = ccdp.subtract_dark(ccd, master_dark, exposure_time="exptime", exposure_unit=u.second,
                                     scale=True)
            flats.append(ccd)
        master_flats[filt] = ccdp.combine(flats, method="average", scale=inv_median, sigma_clip=True,
                                          sigma_clip_low_thresh=5, sigma_clip_high_thresh=5,
                                          sigma_clip_func=np.ma.median, sigma_clip_dev_func=mad_std,
                                          mem_limit=350e6)
        master_flats[filt].write(out_dir / f"master_flat_{filt}.fits", overwrite=True)

    # lights: calibrate, register to the first of each filter, mean stack
    for filt, master_flat in master_flats.items():
        light_files = ifc.files_filtered(imagetyp="Light Frame", filter=filt, include_path=True)
        registered = []
        reference = None
        for f in light_files:
            light = CCDData.read(f, unit="adu")
            reduced = ccdp.ccd_process(light, master_bias=master_bias, dark_frame=master_dark,
                                       master_flat=master_flat, exposure_key="exptime",
                                       exposure_unit=u.second, dark_scale=True)
            reduced.write(out_dir / f"cal_{Path(f).name}", overwrite=True)
            data = np.asarray(reduced.data, dtype=np.float32)
            if reference is None:
                reference = data
                registered.append(data)
                continue
            aligned, _footprint = aa.register(data, reference)
            registered.append(aligned)
        stacked = np.mean(registered, axis=0)
        CCDData(stacked, unit="adu").write(out_dir / f"stack_{filt}.fits", overwrite=True)
        print(f"stacked {len(registered)} {filt} lights")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
