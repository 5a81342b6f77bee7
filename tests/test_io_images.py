"""Image / label reading conversions and bad-input errors (io.images, io.type_info)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from hovercrypt.errors import InputError
from hovercrypt.io.images import read_label, read_rgb
from hovercrypt.io.type_info import load_type_info


def test_grey_image_becomes_rgb(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(grey).save(tmp_path / "g.png")
    rgb = read_rgb(tmp_path / "g.png")
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], grey) and np.array_equal(rgb[..., 2], grey)


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (100, 50, 20)
    rgba[:2, :, 3] = 255  # opaque half keeps its colour
    rgba[2:, :, 3] = 0  # transparent half is glass (white)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rgb = read_rgb(tmp_path / "a.png")
    assert rgb.shape == (4, 4, 3)
    assert np.all(rgb[:2] == (100, 50, 20)) and np.all(rgb[2:] == 255)


def test_16bit_image_is_scaled_to_8bit(tmp_path):
    img16 = np.zeros((5, 6, 3), np.uint16)
    img16[..., 0] = 65535
    img16[..., 1] = 257 * 128
    tifffile.imwrite(tmp_path / "x.tif", img16)
    rgb = read_rgb(tmp_path / "x.tif")
    assert rgb.dtype == np.uint8 and np.all(rgb[..., 0] == 255) and np.all(rgb[..., 1] == 128)
    assert np.all(rgb[..., 2] == 0)


def test_16bit_grey_png(tmp_path):
    g = np.full((3, 3), 65535, np.uint16)
    Image.fromarray(g).save(tmp_path / "g16.png")
    rgb = read_rgb(tmp_path / "g16.png")
    assert rgb.shape == (3, 3, 3) and np.all(rgb == 255)


def test_16bit_label_keeps_ids(tmp_path):
    lab = np.array([[0, 300], [70000 % 65536, 1]], np.uint16)
    Image.fromarray(lab).save(tmp_path / "l.png")
    assert np.array_equal(read_label(tmp_path / "l.png"), lab.astype(np.int32))


def test_rgb_label_map_is_rejected(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "l.png")
    with pytest.raises(InputError, match=r"l\.png: a label map must be single-channel"):
        read_label(tmp_path / "l.png")


def test_palette_png_label_keeps_its_indices(tmp_path):
    """Label maps are often saved as indexed PNGs: the ids are the palette indices, not colours."""
    lab = np.array([[0, 1, 2], [2, 0, 7]], np.uint8)
    im = Image.fromarray(lab, mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9, 9, 9] * 253)
    im.save(tmp_path / "p.png")
    assert np.array_equal(read_label(tmp_path / "p.png"), lab.astype(np.int32))
    # the same file read as an image gives the palette colours
    assert read_rgb(tmp_path / "p.png")[0, 1].tolist() == [255, 0, 0]


def test_negative_label_is_rejected(tmp_path):
    tifffile.imwrite(tmp_path / "n.tif", np.array([[0, -1]], np.int32))
    with pytest.raises(InputError, match=r"n\.tif: label map has negative values"):
        read_label(tmp_path / "n.tif")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_rgb(tmp_path / "none.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"bad\.png: cannot be read as an image"):
        read_rgb(tmp_path / "bad.png")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"0": ["background", [0, 0, 0]], "2": ["x", [1, 2, 3]]}, "consecutive"),
        ({"0": ["background", [0, 0, 0]], "1": ["x", [1, 2, 300]]}, "colour of type 1"),
        ({"0": ["background", [0, 0, 0]], "1": ["background", [1, 2, 3]]}, "unique"),
        ({"0": "background"}, r"entry 0 must be \[name"),
        ([1, 2], "non-empty JSON object"),
    ],
)
def test_bad_type_info(tmp_path, data, message):
    p = tmp_path / "t.json"
    p.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message):
        load_type_info(p)


def test_type_info_bad_json_and_good_file(tmp_path, repo_root):
    p = tmp_path / "t.json"
    p.write_text("{oops")
    with pytest.raises(InputError, match=r"t\.json: not valid JSON"):
        load_type_info(p)
    info = load_type_info(repo_root / "hovercrypt" / "type_info.json")
    assert info.names[0] == "background" and len(info) == len(info.colors)
