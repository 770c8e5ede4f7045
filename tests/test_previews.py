"""Preview PNGs: drawn pixel for pixel at the size shown, in the fewest channels that hold them."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ccdwatch import previews


def test_png_channels_are_the_fewest_that_hold_every_pixel():
    rgba = np.full((4, 5, 4), 255, np.uint8)
    rgba[..., :3] = 80  # grey
    assert previews._fewest_channels(rgba).shape == (4, 5)
    rgba[1, 2, 0] = 200  # one pixel with colour
    assert previews._fewest_channels(rgba).shape == (4, 5, 3)
    rgba[0, 0, 3] = 10  # one pixel not opaque
    out = previews._fewest_channels(rgba)
    assert out.shape == (4, 5, 4) and np.array_equal(out, rgba) and out.flags.c_contiguous


def test_previews_draw_their_image_pixel_for_pixel(tmp_path):
    rng = np.random.default_rng(3)
    frame = rng.normal(100.0, 5.0, (2048, 2048)).astype(np.float32)
    stack = previews.image_preview(frame, tmp_path / "stack.png", title="stack")
    master = previews.master_preview(frame, tmp_path / "master.png", title="master bias")
    small = previews.master_preview(frame[:192, :256], tmp_path / "small.png", title="master bias")
    with Image.open(stack) as im:  # 2048 px block-averaged by 3: 682 px, drawn as it is, grey
        assert im.mode == "L" and im.size == (682, 682 + 35)
    with Image.open(master) as im:  # by 4 (at most 600 px): 512 px between margins of 80 + 130 px
        assert im.mode == "L" and im.size == (80 + 512 + 130, 60 + 512 + 40)
        img = np.asarray(im)[40:40 + 512, 80:80 + 512].astype(float)
    # the image area holds 512 distinct columns: none dropped or repeated by a resampling
    assert np.all(np.abs(np.diff(img, axis=1)).sum(axis=0) > 0)
    with Image.open(small) as im:  # a small frame's pixels repeated twice: at least 400 px across
        assert im.size == (80 + 512 + 130, 60 + 384 + 40)
    colour = previews.image_preview(np.stack([frame[:256, :256]] * 2 + [frame[:256, :256] * 0.5]),
                                    tmp_path / "rgb.png", title="RGB stack")
    with Image.open(colour) as im:
        assert im.mode == "RGB"
