"""Receiving a multipart upload as a stream, straight to disk, under a byte limit.

Frameworks usually parse the whole form (spooling the file) before the handler runs,
which lets a client fill the disk before any limit applies; here each chunk is
written as it arrives and the upload stops at the limit. A body that breaks the format
(a boundary over RFC 2046's 70 characters, an oversized part header, garbage, no
closing boundary) is a 400, and a file is only accepted once its part has ended.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from tilesight.errors import InvalidInput, TooLarge

MAX_FIELD_BYTES = 4096
MAX_HEADER_BYTES = 4096  # one part's headers, all together
MAX_BOUNDARY = 70  # RFC 2046


class UploadSink:
    """Feeds multipart bytes into one file field (written to `dest`) and small text fields."""

    def __init__(self, content_type: str, dest: Path, file_field: str, max_bytes: int) -> None:
        kind, options = parse_options_header(content_type)
        if kind != b"multipart/form-data" or b"boundary" not in options:
            raise InvalidInput("send the upload as multipart/form-data with a `file` field")
        if not 0 < len(options[b"boundary"]) <= MAX_BOUNDARY:
            raise InvalidInput(
                f"the multipart boundary must be 1 to {MAX_BOUNDARY} characters",
                field="content-type",
            )
        self.dest = dest
        self.file_field = file_field
        self.max_bytes = max_bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_bytes = 0
        self._out: Any = None
        self._name = ""
        self._headers: dict[str, str] = {}
        self._header_field = b""
        self._header_value = b""
        self._value = bytearray()
        self._header_bytes = 0
        self._file_done = False
        self._ended = False
        self._parser = MultipartParser(
            options[b"boundary"],
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda d, s, e: self._add("_header_field", d[s:e]),
                "on_header_value": lambda d, s, e: self._add("_header_value", d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    async def consume(self, chunks: AsyncIterator[bytes]) -> None:
        """Read the whole body; the partial file is removed if anything goes wrong."""
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            try:
                async for chunk in chunks:
                    self._parser.write(chunk)
                self._parser.finalize()
            except FormParserError as exc:
                raise InvalidInput(f"the multipart body is malformed: {exc}"[:300]) from exc
            if self.filename is None:
                raise InvalidInput(f"the form has no `{self.file_field}` file field")
            if not (self._file_done and self._ended):
                raise InvalidInput(
                    "the multipart body ended before its closing boundary; the upload is incomplete"
                )
        except BaseException:
            self._close()
            self.dest.unlink(missing_ok=True)
            raise
        self._close()

    def _add(self, attr: str, data: bytes) -> None:
        self._header_bytes += len(data)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise InvalidInput(f"a multipart part's headers exceed {MAX_HEADER_BYTES} bytes")
        setattr(self, attr, getattr(self, attr) + data)

    def _part_begin(self) -> None:
        self._headers, self._name, self._value = {}, "", bytearray()
        self._header_bytes = 0

    def _header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = self._header_value.decode(
            "latin-1"
        )
        self._header_field, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", ""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == self.file_field:
            self.filename = options.get(b"filename", b"upload").decode("utf-8", "replace")
            self._out = open(self.dest, "wb")  # noqa: SIM115 - closed in _part_end/_close

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._out is not None:
            self.file_bytes += end - start
            if self.file_bytes > self.max_bytes:
                raise TooLarge(
                    f"the upload exceeds the limit of {self.max_bytes} bytes", limit=self.max_bytes
                )
            self._out.write(data[start:end])
        else:
            self._value.extend(data[start:end])
            if len(self._value) > MAX_FIELD_BYTES:
                raise InvalidInput(f"form field {self._name!r} is too long")

    def _part_end(self) -> None:
        if self._out is not None:
            self._file_done = True
            self._close()
        elif self._name:
            self.fields[self._name] = self._value.decode("utf-8", "replace")

    def _end(self) -> None:
        self._ended = True

    def _close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
