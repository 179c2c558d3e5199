"""Chip names, zip unpacking and the chip mosaic, on real demo chips."""

from __future__ import annotations

import shutil
import time
import zipfile
from pathlib import Path, PurePosixPath

import pytest
import rasterio

from tilesight.errors import InvalidInput, TooLarge, Unprocessable
from tilesight.imagery.chips import chips_to_cog, extract_zip, find_chips, parse_chip

NAIROBI = Path(__file__).resolve().parents[2] / "data" / "demo" / "buildings" / "nairobi"
X, Y = 1263512, 1056200


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("OAM-1263512-1056200-21.png", (1263512, 1056200, 21)),
        ("21/1263512/1056200.png", (1263512, 1056200, 21)),
        ("tiles/19/5/7.jpg", (5, 7, 19)),
        ("3-1-2.webp", (3, 1, 2)),
        ("OAM-9-9-2.png", None),  # x, y beyond 2**z
        ("labels.geojson", None),
        ("21/a/1.png", None),
    ],
)
def test_parse_chip(name: str, expected: tuple[int, int, int] | None) -> None:
    assert parse_chip(PurePosixPath(name)) == expected


def test_mosaic_keeps_the_top_zoom_and_masks_the_gaps(tmp_path: Path) -> None:
    folder = tmp_path / "chips"
    folder.mkdir()
    # Two chips on a diagonal, plus a lower-zoom chip that must be ignored.
    for x, y in [(X, Y), (X + 1, Y + 1)]:
        shutil.copy(NAIROBI / f"OAM-{x}-{y}-21.png", folder / f"OAM-{x}-{y}-21.png")
    shutil.copy(NAIROBI / f"OAM-{X // 2}-{Y // 2}-20.png", folder / f"OAM-{X // 2}-{Y // 2}-20.png")
    assert {c.z for c in find_chips(folder)} == {21}
    cog = chips_to_cog(folder, tmp_path / "out.tif")
    with rasterio.open(cog) as dataset:
        assert (dataset.width, dataset.height, dataset.crs.to_epsg()) == (512, 512, 3857)
        mask = dataset.dataset_mask()
        assert mask[:256, :256].all() and mask[256:, 256:].all()
        assert not mask[:256, 256:].any() and not mask[256:, :256].any()


def test_empty_folder_says_how_to_name_chips(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(Unprocessable, match="no XYZ chips"):
        find_chips(tmp_path)


def test_zip_refuses_traversal_and_keeps_only_chips(tmp_path: Path) -> None:
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.write(NAIROBI / f"OAM-{X}-{Y}-21.png", f"21/{X}/{Y}.png")
        zf.writestr("notes.txt", "ignored")
    out = extract_zip(good, tmp_path / "out", max_bytes=10**7)
    assert [p.name for p in out.rglob("*") if p.is_file()] == [f"{Y}.png"]
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../21/1/1.png", b"x")
    with pytest.raises(InvalidInput, match="outside the archive"):
        extract_zip(evil, tmp_path / "evil-out", max_bytes=10**7)
    assert not (tmp_path / "21").exists()
    (tmp_path / "fake.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(InvalidInput, match="not a valid zip"):
        extract_zip(tmp_path / "fake.zip", tmp_path / "x", max_bytes=10)


def _spread_zip(path: Path, z: int) -> Path:
    chip = (NAIROBI / f"OAM-{X}-{Y}-21.png").read_bytes()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{z}/0/0.png", chip)
        zf.writestr(f"{z}/{2**z - 1}/{2**z - 1}.png", chip)
    return path


def test_spread_zip_is_refused_from_its_names_within_a_second(tmp_path: Path) -> None:
    """Two corner chips of z7 would be a 32768² mosaic: 15 s and 566 MB before."""
    archive = _spread_zip(tmp_path / "spread.zip", 7)
    start = time.perf_counter()
    with pytest.raises(TooLarge, match="the limit is 536870912 pixels") as caught:
        extract_zip(archive, tmp_path / "out", max_bytes=10**7)
    assert time.perf_counter() - start < 1.0
    assert caught.value.detail["limit"] == 2**29 and caught.value.status_code == 413
    assert not (tmp_path / "out").exists(), "nothing is unpacked before the check"
    # within the pixel budget but 2 chips over 4x4 tiles of extent... still spread too far
    with pytest.raises(TooLarge, match="at most 16 tiles per chip"):
        extract_zip(_spread_zip(tmp_path / "z3.zip", 3), tmp_path / "out3", max_bytes=10**7)


def test_chip_folder_over_the_budget_is_refused_before_reading(tmp_path: Path) -> None:
    for x, y in [(X, Y), (X + 1, Y)]:
        shutil.copy(NAIROBI / f"OAM-{x}-{y}-21.png", tmp_path / f"OAM-{x}-{y}-21.png")
    with pytest.raises(TooLarge, match="span 2x1 tiles"):
        chips_to_cog(tmp_path, tmp_path / "out.tif", max_pixels=65536)
    assert not (tmp_path / "out.tif").exists()


def test_a_member_larger_than_a_chip_is_cut_off_while_streaming(tmp_path: Path) -> None:
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"21/{X}/{Y}.png", b"\0" * (16 << 20))
    with pytest.raises(TooLarge, match="a chip file may be at most"):
        extract_zip(archive, tmp_path / "out", max_bytes=1 << 30)


def test_a_zip_listing_too_many_entries_is_refused_before_zipfile_reads_them(
    tmp_path: Path,
) -> None:
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for i in range(50_001):
            zf.writestr(f"n/{i}", b"")
    with pytest.raises(TooLarge, match="more than 50000 entries"):
        extract_zip(archive, tmp_path / "out", max_bytes=10**7)
