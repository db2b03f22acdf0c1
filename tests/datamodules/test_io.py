"""TIFF IO: round-trips, the real LZW originals, and one-line errors for damaged files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from datamodules.errors import DataError
from datamodules.io import read_tif, write_tif


@pytest.mark.parametrize("lzw", [True, False])
def test_round_trip(tmp_path, lzw):
    arr = np.random.default_rng(0).integers(0, 256, (7, 5), dtype=np.uint8)
    write_tif(tmp_path / "a.tif", arr, lzw=lzw)
    out = read_tif(tmp_path / "a.tif")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:
        expected = tifffile.COMPRESSION.LZW if lzw else tifffile.COMPRESSION.NONE
        assert tif.pages[0].compression == expected


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.tif: file not found"):
        read_tif(tmp_path / "nope.tif")


def test_not_a_tif(tmp_path):
    (tmp_path / "junk.tif").write_bytes(b"hello world" * 10)
    with pytest.raises(DataError, match=r"junk.tif: corrupt or truncated tif"):
        read_tif(tmp_path / "junk.tif")


@pytest.mark.parametrize("keep", [0.01, 0.5, 0.99])
def test_truncated_written_tif(tmp_path, keep):
    arr = np.random.default_rng(1).integers(0, 256, (64, 80), dtype=np.uint8)
    write_tif(tmp_path / "full.tif", arr)
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match="cut.tif: corrupt or truncated tif") as info:
        read_tif(tmp_path / "cut.tif")
    assert "\n" not in str(info.value)


def test_wrong_dtype_and_rank(tmp_path):
    tifffile.imwrite(tmp_path / "u16.tif", np.zeros((4, 4), np.uint16))
    with pytest.raises(DataError, match="u16.tif: expected uint8 pixels, got uint16"):
        read_tif(tmp_path / "u16.tif")
    two = np.zeros((5, 6, 2), np.uint8)
    tifffile.imwrite(tmp_path / "two.tif", two, photometric="minisblack", planarconfig="contig")
    with pytest.raises(
        DataError, match=r"two.tif: expected a 2-D grayscale image, got array of shape \(5, 6, 2\)"
    ):
        read_tif(tmp_path / "two.tif")


def test_a_file_of_several_pages_is_refused_not_read_as_its_first(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((2, 5, 6), np.uint8))
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:  # two pages written apart: two series
        tif.write(np.zeros((5, 6), np.uint8))
        tif.write(np.ones((5, 6), np.uint8))
    for name in ("stack.tif", "pages.tif"):
        with pytest.raises(DataError, match=f"{name}: 2 pages; expected one image per file$"):
            read_tif(tmp_path / name)


def test_rgb_export_of_a_grayscale_frame_reads_as_one_channel(tmp_path):
    rgb = np.full((4, 5, 3), 7, np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(read_tif(tmp_path / "rgb.tif"), np.full((4, 5), 7, np.uint8))


def test_a_colour_tif_is_refused_not_read_as_its_red_channel(tmp_path):
    """A mask painted green has an empty red channel: read as channel 0 it was a silent empty label."""
    green = np.zeros((4, 5, 3), np.uint8)
    green[1:3, 1:3, 1] = 255
    tifffile.imwrite(tmp_path / "1_1_mask.tif", green, photometric="rgb")
    with pytest.raises(
        DataError, match=r"1_1_mask.tif: colour image: its red, green and blue channels differ"
    ):
        read_tif(tmp_path / "1_1_mask.tif")


def test_real_lzw_originals(uns_sample):
    """The Kaggle files are LZW; reading them needs imagecodecs, which must be installed."""
    for path in [
        uns_sample / "train" / "1_1.tif",
        uns_sample / "train" / "1_1_mask.tif",
        uns_sample / "test" / "1.tif",
    ]:
        with tifffile.TiffFile(path) as tif:
            assert tif.pages[0].compression == tifffile.COMPRESSION.LZW
        arr = read_tif(path)
        assert arr.shape == (420, 580) and arr.dtype == np.uint8
    assert 0 < read_tif(uns_sample / "train" / "1_1.tif").std()
    assert set(np.unique(read_tif(uns_sample / "train" / "1_1_mask.tif")).tolist()) == {0, 255}


@pytest.mark.parametrize("keep", [0.1, 0.99])
def test_truncated_real_tif_is_one_error_and_silent(uns_sample, tmp_path, capfd, keep):
    """Kaggle tifs keep their IFD at the end: tifffile only *logs* that; it must become a DataError."""
    data = (uns_sample / "train" / "1_1_mask.tif").read_bytes()
    (tmp_path / "cut_mask.tif").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match="cut_mask.tif: corrupt or truncated tif"):
        read_tif(tmp_path / "cut_mask.tif")
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_lzw_without_imagecodecs_says_so_not_corrupt(tmp_path):
    """An intact LZW tif (as Kaggle ships them) in an install without imagecodecs: one line naming the
    file and the missing package, not "corrupt" (seen on a bare GPU image)."""
    path = tmp_path / "1_1.tif"
    write_tif(path, np.full((4, 6), 7, np.uint8), lzw=True)
    probe = (
        "import sys; sys.modules['imagecodecs'] = None\n"  # as if not installed
        "from datamodules.io import read_tif\n"
        "from datamodules.errors import DataError\n"
        "try:\n    read_tif(sys.argv[1])\nexcept DataError as e:\n    print(e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=600
    )
    line = done.stdout.strip()
    assert done.returncode == 0 and line.startswith(str(path)), done.stderr[-2000:]
    assert "requires the 'imagecodecs' package" in line and "pip install imagecodecs" in line
    assert "corrupt" not in line and "\n" not in line
