"""Append one JSON line per event to a file, from any number of processes and threads.

Each line is one ``os.write`` on a descriptor opened with ``O_APPEND``: the kernel
moves to the end and writes under the file's lock, so lines from concurrent writers
never interleave or tear, whatever their length (on a local file system; NFS does not
honour ``O_APPEND`` across machines). Python's buffered files would split a long line
into several writes. The descriptor is opened on first use in each process.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from ..errors import DeliveryError
from ..options import OptionsSchema, WritableFile
from .base import Destination, Payload


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
        self._fd: int | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _descriptor(self) -> int:
        fd, pid = self._fd, os.getpid()
        if fd is not None and self._pid == pid:
            return fd
        with self._lock:
            if self._fd is None or self._pid != pid:
                # An inherited descriptor is shared with the parent: harmless with
                # O_APPEND, but each process opens its own so close() owns it.
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
                self._pid = pid
            return self._fd

    def deliver(self, payload: Payload) -> None:
        # The JSON encoder escapes newlines inside strings: the body is one line.
        line = payload.body + b"\n"
        try:
            fd = self._descriptor()
            written = os.write(fd, line)
            if written != len(line):
                # Only a full disk or a file size limit gets here: end the partial line
                # so the next one starts clean; the event itself goes to the spool.
                os.write(fd, b"\n")
                raise DeliveryError(f"jsonl {self.path}: short write ({written} of {len(line)} bytes)")
        except OSError as exc:
            raise DeliveryError(f"jsonl {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None
