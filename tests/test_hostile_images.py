"""Never explain a picture that is not what the file says (issue 26): damaged JPEG data is an error
row (unless --lenient), the EXIF orientation is applied, float images follow the rule for arrays."""
from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest

from unioncam import ImageReadError
from unioncam.cli import main
from unioncam.image_io import read_rgb, sample_image_path

FAST = ["--layer", "stem", "--no-progress"]


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """A real photo as an intact JPEG, one with flipped bytes in its data, one with a damaged
    header segment, and one whose EXIF says "rotate 90 degrees clockwise"."""
    from PIL import Image

    d = tmp_path_factory.mktemp("jpegs")
    rgb = read_rgb(sample_image_path("chelsea"))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    data = buf.tobytes()
    (d / "intact.jpg").write_bytes(data)
    flipped = bytearray(data)
    for i in np.random.default_rng(0).integers(1000, len(data) - 10, 40):
        flipped[i] ^= 0x5A
    (d / "flipped.jpg").write_bytes(bytes(flipped))
    header = bytearray(data)
    header[200:260] = b"\x00" * 60
    (d / "header.jpg").write_bytes(bytes(header))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored pixels must be turned 90 degrees clockwise to display
    Image.open(d / "intact.jpg").save(d / "rotated.jpg", exif=exif.tobytes(), quality=92)
    return d


@pytest.mark.parametrize("name", ["flipped.jpg", "header.jpg"])
def test_damaged_jpeg_data_is_refused_and_lenient_reads_it(jpegs, name):
    with pytest.raises(ImageReadError, match="damaged.*Corrupt JPEG data.*--lenient"):
        read_rgb(jpegs / name)
    assert read_rgb(jpegs / name, lenient=True).shape == read_rgb(jpegs / "intact.jpg").shape


def test_the_exif_orientation_is_applied(jpegs):
    stored = read_rgb(jpegs / "intact.jpg")
    upright = read_rgb(jpegs / "rotated.jpg")
    assert upright.shape == (stored.shape[1], stored.shape[0], 3)
    # Turned clockwise by hand; the re-encoding of the EXIF copy costs a few grey levels.
    assert np.abs(upright.astype(int) - np.rot90(stored, k=-1).astype(int)).mean() < 3


def test_float_images_follow_the_rule_for_arrays(tmp_path):
    rgb = read_rgb(sample_image_path("coffee")).astype(np.float32)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(tmp_path / "unit.tiff"), bgr / 255.0)
    cv2.imwrite(str(tmp_path / "bytes.tiff"), bgr)
    nan = bgr / 255.0
    nan[10, 10] = np.nan
    cv2.imwrite(str(tmp_path / "nan.tiff"), nan)
    np.testing.assert_allclose(read_rgb(tmp_path / "unit.tiff"), rgb, atol=1)
    with pytest.raises(ImageReadError, match=r"float pixels in \[0, 255\].*\[0, 1\]"):
        read_rgb(tmp_path / "bytes.tiff")
    with pytest.raises(ImageReadError, match="NaN"):
        read_rgb(tmp_path / "nan.tiff")


def test_a_damaged_photo_is_an_error_row_and_the_others_are_explained(jpegs, tmp_path, capsys):
    out = tmp_path / "out"
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in jpegs.iterdir()}
    rc = main(["explain", str(jpegs / "flipped.jpg"), str(jpegs / "intact.jpg"), "--out", str(out), *FAST])
    err = capsys.readouterr().err
    assert rc == 1 and "flipped.jpg is damaged" in err and "unexpected" not in err, err
    assert not (out / "flipped.json").exists() and not (out / "flipped_cam.npy").exists()
    assert json.loads((out / "intact.json").read_text())["class_idx"] in range(281, 286)  # a cat
    rc = main(["explain", str(jpegs / "flipped.jpg"), "--out", str(out), "--lenient", *FAST])
    assert rc == 0 and (out / "flipped.json").is_file()
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in jpegs.iterdir()} == before


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_a_multipage_rgb_tiff_reads_its_first_page(tmp_path, dtype):
    """A valid multipage RGB TIFF is read as OpenCV reads one, its first page (issue 38: it was
    refused with advice to install tifffile, which was installed)."""
    tifffile = pytest.importorskip("tifffile")
    from unioncam.image_io import read_rgb

    pages = np.random.default_rng(0).integers(0, 256, (3, 40, 50, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "multi.tif", pages if dtype == "uint8" else pages.astype(np.float32) / 255)
    rgb = read_rgb(tmp_path / "multi.tif")
    assert rgb.shape == (40, 50, 3)
    assert np.abs(rgb.astype(int) - pages[0]).max() <= 1
