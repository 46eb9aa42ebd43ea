"""gunicorn server hooks for metrics that add up across workers.

Run gunicorn with ``-c python:pixel_wsgi.gunicorn_hooks`` (or, in your own
``gunicorn.conf.py``: ``from pixel_wsgi.gunicorn_hooks import *``):

- ``on_starting``: when ``$PROMETHEUS_MULTIPROC_DIR`` is not set, the master creates a
  private directory for this run and sets it for its workers; when it is set, it must
  exist and any files left from an earlier run are removed (they would be counted again).
- ``child_exit``: a dead worker's live gauges are removed (``mark_process_dead``); its
  counters stay, so counts never go backwards, and a new worker writes files of its own
  (named by its pid), so nothing is counted twice.
- ``on_exit``: the private directory is removed.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from typing import Any

MULTIPROCESS_ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
_PRIVATE_MARKER = "PIXEL_WSGI_PRIVATE_METRICS_DIR"


def on_starting(server: Any) -> None:
    directory = os.environ.get(MULTIPROCESS_ENV_VAR)
    if not directory:
        directory = tempfile.mkdtemp(prefix="pixel-wsgi-metrics-")
        os.environ[MULTIPROCESS_ENV_VAR] = directory
        os.environ[_PRIVATE_MARKER] = directory
        server.log.info("metrics: %s=%s (private to this gunicorn)", MULTIPROCESS_ENV_VAR, directory)
        return
    os.makedirs(directory, exist_ok=True)
    for stale in glob.glob(os.path.join(directory, "*.db")):
        os.remove(stale)


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get(MULTIPROCESS_ENV_VAR):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    private = os.environ.get(_PRIVATE_MARKER)
    if private and private == os.environ.get(MULTIPROCESS_ENV_VAR):
        shutil.rmtree(private, ignore_errors=True)
