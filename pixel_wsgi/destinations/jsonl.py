"""Append one JSON line per event to a file, from any number of processes and threads.

Each line is one ``os.write`` on a descriptor opened with ``O_APPEND``: the kernel
moves to the end and writes under the file's lock, so lines from concurrent writers
never interleave or tear, whatever their length (on a local file system; NFS does not
honour ``O_APPEND`` across machines). Python's buffered files would split a long line
into several writes. The descriptor is opened on first use in each process, and the
file is created 0600 (events hold email addresses and IPs); an existing file keeps
its mode.

Rotation (logrotate without ``copytruncate``) is followed the way
``logging.handlers.WatchedFileHandler`` does it: before each line, ``path`` is
compared (device, inode) with the open descriptor, and a renamed or deleted file is
replaced by a new one at ``path``. After the write, a descriptor whose file has no
name left (deleted between the check and the write) gets the line written again at
``path``: an event answered 200 is never only in a deleted inode. A rename between
the check and the write leaves the line in the renamed file, where a reader of the
rotated files finds it.

A write that fails part-way (disk full, a file size limit) is cut back off the file
when nothing was appended after it, and otherwise ended with a newline before the
next line: a later line is never glued to a fragment.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from ..errors import DeliveryError
from ..options import OptionsSchema, WritableFile
from ..resources import PRIVATE_FILE_MODE
from .base import Destination, Payload

logger = logging.getLogger(__name__)

# Read access only to look at the last byte after a failed write; writes always append.
OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


class _OpenFile:
    """One open descriptor, closed when the last thread using it lets go of it.

    A rotation replaces the object; a thread in the middle of a write on the old one
    still holds it, so the descriptor number cannot be closed and reused under it.
    """

    __slots__ = ("fd", "device", "inode", "pid", "needs_newline")

    def __init__(self, path: str) -> None:
        self.fd, self.pid = -1, os.getpid()  # what __del__ needs if the open fails
        try:
            self.fd = os.open(path, OPEN_FLAGS, PRIVATE_FILE_MODE)
        except PermissionError:
            # A file we may append to but not read: writing is all that is needed.
            self.fd = os.open(path, OPEN_FLAGS & ~os.O_RDWR | os.O_WRONLY, PRIVATE_FILE_MODE)
        status = os.fstat(self.fd)
        self.device, self.inode = status.st_dev, status.st_ino
        # A fragment of a failed write could not be removed: end it before the next line.
        self.needs_newline = False

    def is_at(self, path: str) -> bool:
        try:
            status = os.stat(path)
        except FileNotFoundError:
            return False
        return status.st_dev == self.device and status.st_ino == self.inode

    def unlinked(self) -> bool:
        return os.fstat(self.fd).st_nlink == 0

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        # An inherited descriptor belongs to the parent process's object too.
        if fd >= 0 and self.pid == os.getpid():
            os.close(fd)

    def __del__(self) -> None:
        self.close()


@dataclass(frozen=True)
class JSONLinesOptions:
    path: str


class JSONLinesOptionsSchema(OptionsSchema):
    model = JSONLinesOptions
    path = WritableFile(required=True)


class JSONLinesDestination(Destination):
    kind = "jsonl"
    Options = JSONLinesOptionsSchema
    options: JSONLinesOptions

    def __init__(self, name: str, options: JSONLinesOptions) -> None:
        super().__init__(name, options)
        self.path = options.path
        self._file: _OpenFile | None = None
        # Taken to open or replace the file, never for a write.
        self._lock = threading.Lock()

    def _current(self) -> _OpenFile:
        """This process's file at ``path``, reopened if ``path`` now names another file or none."""
        current = self._file
        if current is not None and current.pid == os.getpid() and current.is_at(self.path):
            return current
        with self._lock:
            current = self._file
            if current is None or current.pid != os.getpid() or not current.is_at(self.path):
                if current is not None and current.pid == os.getpid():
                    logger.info("jsonl %s was rotated or removed: writing to a new file", self.path)
                # The old object is closed when the last thread writing to it is done.
                current = self._file = _OpenFile(self.path)
            return current

    def deliver(self, payload: Payload) -> None:
        # The JSON encoder escapes newlines inside strings: the body is one line.
        line = payload.body + b"\n"
        try:
            opened = self._current()
            self._append(opened, line)
            if opened.unlinked():
                # Deleted between the check and the write: the line is in no file.
                self._append(self._current(), line)
        except OSError as exc:
            raise DeliveryError(f"jsonl {self.path}: {exc.strerror or exc}") from exc

    def _append(self, opened: _OpenFile, line: bytes) -> None:
        if opened.needs_newline and not self._ends_a_line(opened):
            line = b"\n" + line
        try:
            written = os.write(opened.fd, line)
        except OSError:
            # Nothing of this line reached the file (a write either fails or is short).
            raise
        if written == len(line):
            opened.needs_newline = False
            return
        self._remove_fragment(opened, written)
        raise DeliveryError(f"jsonl {self.path}: short write ({written} of {len(line)} bytes): disk full or file size limit")

    @staticmethod
    def _ends_a_line(opened: _OpenFile) -> bool:
        """Whether the file is empty or ends with a newline (another writer may have ended it)."""
        try:
            size = os.fstat(opened.fd).st_size
            return size == 0 or os.pread(opened.fd, 1, size - 1) == b"\n"
        except OSError:  # opened write-only: end the fragment to be safe
            return False

    @staticmethod
    def _remove_fragment(opened: _OpenFile, written: int) -> None:
        """Cut a short write back off the file, or make sure the next line starts on a line of its own."""
        try:
            end = os.lseek(opened.fd, 0, os.SEEK_CUR)
            # Only when nothing was appended after the fragment (by another process).
            if os.fstat(opened.fd).st_size == end:
                os.ftruncate(opened.fd, end - written)
                return
        except OSError:
            pass
        opened.needs_newline = True

    def close(self) -> None:
        with self._lock:
            current, self._file = self._file, None
        if current is not None:
            current.close()
