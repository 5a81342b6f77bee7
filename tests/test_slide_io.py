"""Slide reading: pyramids written by the synthetic writer, resolution handling, region consistency."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
import tifffile

from hovercrypt.errors import InputError
from hovercrypt.io.images import write_png
from hovercrypt.io.slide import SlideReader, _area_matrix
from hovercrypt.testing.slides import STROMA, random_layout, render_tile, write_layout_slide

MPP = 0.25


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    d = tmp_path_factory.mktemp("slides")
    lay = random_layout(2048, 1536, [(100, 100, 1900, 1400)], 30, (30.0, 60.0), seed=4, gap=10)
    return write_layout_slide(d / "p.tif", lay, MPP, downsamples=(1, 4)), lay


def test_openslide_sees_pages_as_levels_with_mpp(pyramid):
    path, _ = pyramid
    s = openslide.OpenSlide(str(path))
    assert s.properties["openslide.vendor"] == "generic-tiff"
    assert s.level_count == 2 and s.level_dimensions == ((2048, 1536), (512, 384))
    assert s.level_downsamples == (1.0, 4.0)
    assert float(s.properties["openslide.mpp-x"]) == pytest.approx(MPP)
    with tifffile.TiffFile(path) as tf:
        assert [p.compression for p in tf.pages] == [7, 7] and tf.pages[0].is_tiled


def test_reads_match_rendered_image(pyramid):
    path, lay = pyramid
    with SlideReader(path) as r:
        assert r.mpp == pytest.approx(MPP) and r.mpp_source == "slide"
        full = r.read(0, 0, 2048, 1536, MPP)
        truth = render_tile(lay, 1, 0, 0, 2048, 1536)
        assert np.abs(full.astype(int) - truth).mean() < 4  # JPEG loss only
        assert np.abs(full[700, 150].astype(int) - STROMA).max() < 12  # colours (YCbCr) decoded right
        # 2x coarser: area mean of 2x2 blocks of level 0
        half = r.read(0, 0, 1024, 768, 2 * MPP)
        ref = full.reshape(768, 2, 1024, 2, 3).mean(axis=(1, 3))
        assert np.abs(half - ref).max() <= 1
        # 4x coarser is level 1 itself
        assert r.size_at(4 * MPP) == (512, 384)
        lvl = np.asarray(openslide.OpenSlide(str(path)).read_region((0, 0), 1, (512, 384)))[..., :3]
        assert np.array_equal(r.read(0, 0, 512, 384, 4 * MPP), lvl)


@pytest.mark.parametrize("factor", [1.5, 2.0, 6.0])
def test_region_reads_are_position_consistent(pyramid, factor):
    """A pixel has the same value whichever region it was read in (stitching relies on it)."""
    path, _ = pyramid
    mpp = MPP * factor
    with SlideReader(path) as r:
        W, H = r.size_at(mpp)
        big = r.read(0, 0, W, H, mpp)
        for x, y, w, h in [(7, 3, 100, 90), (W - 61, H - 50, 61, 50), (33, 41, 1, 1)]:
            assert np.array_equal(r.read(x, y, w, h, mpp), big[y : y + h, x : x + w])
        with pytest.raises(ValueError, match="outside the slide"):
            r.read(W - 10, 0, 11, 5, mpp)


def test_area_matrix_rows_are_box_weights():
    m = _area_matrix(3, 5, 1.5, 4, 20).toarray()
    assert np.allclose(m.sum(1), 1.0)
    # output pixel 3 covers source [4.5, 6.0): half of pixel 4, all of pixel 5
    assert np.allclose(m[0, :3], [1 / 3, 2 / 3, 0])


def test_missing_resolution_needs_slide_mpp(tmp_path):
    png = tmp_path / "plain.png"
    write_png(png, np.full((40, 60, 3), 200, np.uint8))
    with pytest.raises(InputError, match="slide_mpp"):
        SlideReader(png)
    with SlideReader(png, slide_mpp=0.5) as r:
        assert r.mpp == 0.5 and r.mpp_source == "--slide_mpp" and r.dimensions == (60, 40)
        assert r.read(0, 0, 30, 20, 1.0).shape == (20, 30, 3)


def test_plain_tiff_resolution_tags(tmp_path):
    p = tmp_path / "strip.tif"
    tifffile.imwrite(
        p,
        np.full((50, 80, 3), 90, np.uint8),
        resolution=(1e4 / 0.8, 1e4 / 0.8),
        resolutionunit="CENTIMETER",
        photometric="rgb",
    )
    with SlideReader(p) as r:
        assert r.mpp == pytest.approx(0.8)
    # a 72-dpi default is not a microscope resolution: treated as missing
    q = tmp_path / "dpi.tif"
    tifffile.imwrite(
        q, np.full((50, 80, 3), 90, np.uint8), resolution=(72, 72), resolutionunit="INCH", photometric="rgb"
    )
    with pytest.raises(InputError, match="slide_mpp"):
        SlideReader(q)


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a slide at all" * 10)
    with pytest.raises(InputError, match="bad.svs"):
        SlideReader(bad)
    with pytest.raises(InputError, match="not found"):
        SlideReader(tmp_path / "nope.svs")
