"""Large APPEND literals, written to an unnamed temporary file as they arrive instead of memory."""

from __future__ import annotations

import tempfile


class SpooledLiteral:
    """One literal's bytes on disk; :meth:`read` hands them to the store, :meth:`close` frees them.

    The file is unlinked as soon as it is made (``TemporaryFile``), so a crash
    leaves nothing behind; closing it (or dropping the last reference) frees
    the space. Its directory is ``TMPDIR`` (``/tmp`` by default).
    """

    __slots__ = ("_file", "size", "written")

    def __init__(self, size: int) -> None:
        self._file = tempfile.TemporaryFile(prefix="postroom-imap-literal-")
        self.size = size
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._file.write(data)
        self.written += len(data)

    def read(self) -> bytes:
        """The whole literal (the store takes a message as bytes)."""
        self._file.flush()
        self._file.seek(0)
        return self._file.read()

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def __repr__(self) -> str:
        return f"SpooledLiteral(size={self.size}, written={self.written})"
