"""A short run of ``tests/benchmarks/load_with_faults.py``: gunicorn, a flapping sink, a worker killed.

Every messageId that got a 200 must be delivered or spooled; no request may get a 5xx.
Requests cut by the SIGKILL fail at the client and never got a 200: they are counted
apart and are not losses.
"""

from __future__ import annotations

import pytest

from tests.benchmarks.load_with_faults import run


@pytest.mark.slow
def test_load_with_faults_loses_nothing():
    figures = run(seconds=12, clients=6, flap_period=1.5, verbose=True)
    summary = figures.summary()
    assert summary["lost"] == 0, summary
    assert summary["5xx"] == 0, summary
    assert set(summary["statuses"]) == {200}, summary
    # The faults really happened: a worker died and came back, the sink took some
    # events, and the spool the rest.
    assert figures.killed_worker is not None
    assert figures.workers_at_end == 2, summary
    assert summary["delivered"] > 0 and summary["spooled"] > 0, summary
    assert summary["requests"] > 500, summary
