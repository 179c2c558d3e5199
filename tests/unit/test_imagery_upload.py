"""The streamed multipart upload: fields, the file on disk, and the size limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tilesight.errors import InvalidInput, TooLarge
from tilesight.imagery.upload import UploadSink


def multipart(payload: bytes) -> tuple[str, bytes]:
    request = httpx.Request(
        "POST", "http://x/", files={"file": ("a.tif", payload)}, data={"name": "my source"}
    )
    return request.headers["content-type"], request.read()


async def chunks(body: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


async def test_streams_file_and_fields(tmp_path: Path) -> None:
    content_type, body = multipart(b"\x00\x01" * 5000)
    sink = UploadSink(content_type, tmp_path / "up", "file", max_bytes=20_000)
    await sink.consume(chunks(body))
    assert sink.fields == {"name": "my source"} and sink.filename == "a.tif"
    assert (tmp_path / "up").read_bytes() == b"\x00\x01" * 5000


async def test_limit_stops_and_removes_the_partial_file(tmp_path: Path) -> None:
    content_type, body = multipart(b"x" * 50_000)
    sink = UploadSink(content_type, tmp_path / "up", "file", max_bytes=10_000)
    with pytest.raises(TooLarge):
        await sink.consume(chunks(body))
    assert not (tmp_path / "up").exists()


def test_not_multipart_is_400(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="multipart"):
        UploadSink("application/json", tmp_path / "up", "file", max_bytes=10)


@pytest.mark.parametrize(
    ("content_type", "body", "says"),
    [
        ("multipart/form-data; boundary=" + "b" * 300, b"--" + b"b" * 300 + b"\r\n", "boundary"),
        (
            "multipart/form-data; boundary=xx",
            b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a"\r\nX: '
            + b"p" * 10240
            + b"\r\n\r\ndata\r\n--xx--\r\n",
            "header size exceeded|headers exceed",
        ),
        ("multipart/form-data; boundary=xx", bytes(range(256)) * 40, "malformed"),
    ],
    ids=["boundary-300", "part-header-10k", "garbage"],
)
async def test_malformed_bodies_are_400(
    tmp_path: Path, content_type: str, body: bytes, says: str
) -> None:
    with pytest.raises(InvalidInput, match=says):
        sink = UploadSink(content_type, tmp_path / "up", "file", max_bytes=10**6)
        await sink.consume(chunks(body))
    assert not (tmp_path / "up").exists()


async def test_an_unterminated_body_is_not_a_complete_file(tmp_path: Path) -> None:
    content_type, body = multipart(b"\x00\x01" * 5000)
    sink = UploadSink(content_type, tmp_path / "up", "file", max_bytes=20_000)
    with pytest.raises(InvalidInput, match="ended before its closing boundary"):
        await sink.consume(chunks(body[:-60]))
    assert not (tmp_path / "up").exists()
