"""Prometheus metrics: in-process, and scraped from a real two-worker gunicorn.

Every scrape is parsed with ``prometheus_client``'s own parser, so the text is what a
Prometheus server reads.
"""

from __future__ import annotations

import glob
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families
from webtest import TestApp

from pixel_wsgi import PixelApp, PixelMiddleware
from pixel_wsgi.errors import ConfigError

from .support.processes import environment, write_toml
from .support.servers import gunicorn, http_get
from .support.spool_faults import refused_url


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of one scrape."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(scrape: dict, name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


def config(tmp_path, **metrics):
    return {
        "sources": [{"name": "site", "write_key": "metrics-key"}],
        "destinations": {"store": {"type": "sqlite", "path": str(tmp_path / "events.sqlite3")}},
        "spool": {"path": str(tmp_path / "spool.sqlite3")},
        "metrics": {"path": "/metrics", **metrics},
    }


def track(n: int) -> str:
    return f"/pixel/v1/track?writeKey=metrics-key&anonymousId=a{n}&event=Opened&messageId=m-{n}"


def test_requests_and_deliveries_are_counted(tmp_path):
    app = PixelApp(config(tmp_path))
    client = TestApp(app, extra_environ={"REMOTE_ADDR": "127.0.0.1"})
    for n in range(3):
        client.get(track(n))
    client.get("/pixel/v1/page?writeKey=metrics-key", status=400)
    client.get("/pixel/v1/page?writeKey=wrong&anonymousId=a", status=401)
    client.post("/pixel/v1/page", status=405)
    scrape = samples(client.get("/metrics").text)
    app.close()
    assert value(scrape, "pixel_requests_total", endpoint="track", status="200", source="site") == 3
    assert value(scrape, "pixel_requests_total", endpoint="page", status="400", source="site") == 1
    assert value(scrape, "pixel_requests_total", endpoint="page", status="401", source="") == 1
    assert value(scrape, "pixel_requests_total", endpoint="page", status="405", source="") == 1
    assert value(scrape, "pixel_deliveries_total", destination="store", outcome="delivered") == 3
    assert value(scrape, "pixel_delivery_seconds_count", destination="store") == 3
    assert value(scrape, "pixel_breaker_open", destination="store") == 0


def test_spooled_events_and_the_open_breaker_show(tmp_path):
    settings = config(tmp_path)
    settings["destinations"] = {"hook": {"type": "webhook", "url": refused_url(), "retries": 0}}
    settings["dispatch"] = {"budget": 1.0, "breaker_failures": 2, "breaker_cooldown": 60.0}
    app = PixelApp(settings)
    client = TestApp(app, extra_environ={"REMOTE_ADDR": "127.0.0.1"})
    for n in range(4):
        client.get(track(n))
    scrape = samples(client.get("/metrics").text)
    app.close()
    assert value(scrape, "pixel_deliveries_total", destination="hook", outcome="spooled") == 4
    assert value(scrape, "pixel_spool_events", destination="hook", state="waiting") == 4
    assert value(scrape, "pixel_breaker_open", destination="hook") == 1
    # Two were tried (and failed) before the breaker opened; two were never tried.
    assert value(scrape, "pixel_delivery_seconds_count", destination="hook") == 2


def test_machine_opens_are_counted_through_the_observer(tmp_path):
    app = PixelApp(config(tmp_path))
    assert app.observer is not None
    app.observer.machine_open("gmail-image-proxy")
    app.observer.machine_open("gmail-image-proxy")
    scrape = samples(TestApp(app, extra_environ={"REMOTE_ADDR": "127.0.0.1"}).get("/metrics").text)
    app.close()
    assert value(scrape, "pixel_machine_opens_total", fetcher="gmail-image-proxy") == 2


@pytest.mark.parametrize(
    ("allow", "address", "status"),
    [
        pytest.param(None, "127.0.0.1", 200, id="loopback-by-default"),
        pytest.param(None, "::1", 200, id="ipv6-loopback-by-default"),
        pytest.param(None, "10.1.2.3", 404, id="others-get-404"),
        pytest.param(["10.0.0.0/8"], "10.1.2.3", 200, id="allowed-network"),
        pytest.param(["10.0.0.0/8"], "127.0.0.1", 404, id="loopback-not-in-list"),
        pytest.param(["192.0.2.7"], "::ffff:192.0.2.7", 200, id="ipv4-mapped"),
        pytest.param(None, "", 404, id="no-address"),
    ],
)
def test_only_allowed_clients_see_the_metrics(tmp_path, allow, address, status):
    app = PixelApp(config(tmp_path, **({"allow": allow} if allow is not None else {})))
    client = TestApp(app, extra_environ={"REMOTE_ADDR": address})
    # X-Forwarded-For is never believed for the metrics: anyone can write it.
    response = client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}, status=status)
    app.close()
    if status == 200:
        assert response.content_type == "text/plain"
        assert "# TYPE pixel_requests_total counter" in response.text
    else:
        assert "pixel" not in response.text


def test_the_middleware_serves_metrics_and_health_and_passes_the_rest(tmp_path):
    def site(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"site"]

    app = PixelMiddleware(site, config(tmp_path))
    client = TestApp(app, extra_environ={"REMOTE_ADDR": "127.0.0.1"})
    client.get(track(1))
    assert value(samples(client.get("/metrics").text), "pixel_requests_total", endpoint="track", status="200", source="site") == 1
    assert client.get("/pixel/v1/health").json["status"] == "ok"
    assert client.get("/metricsx").text == "site"
    app.pixel_app.close()


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        pytest.param({"path": "metrics"}, "metrics.path: must be an absolute path", id="relative"),
        pytest.param({"path": ""}, "metrics.path: must not be empty", id="empty"),
        pytest.param({"path": "/m", "allow": ["localhost"]}, "metrics.allow[0]: not an IP address or CIDR network", id="bad-allow"),
        pytest.param({"path": "/m", "allowed": []}, "metrics.allowed: unknown option", id="unknown-key"),
        pytest.param({"path": "/pixel/v1/health"}, "metrics.path: /pixel/v1/health is a pixel endpoint", id="taken"),
    ],
)
def test_metrics_mistakes_are_start_up_errors(tmp_path, metrics, message):
    settings = config(tmp_path)
    settings["metrics"] = metrics
    with pytest.raises(ConfigError) as error:
        PixelApp(settings)
    assert any(line.startswith(message) for line in error.value.errors), error.value.errors


def test_no_metrics_path_means_no_metrics(tmp_path):
    settings = config(tmp_path)
    del settings["metrics"]
    app = PixelApp(settings)
    TestApp(app, extra_environ={"REMOTE_ADDR": "127.0.0.1"}).get("/metrics", status=404)
    assert app.observer is None
    app.close()


@pytest.mark.slow
@pytest.mark.parametrize("preload", [[], ["--preload"]], ids=["no-preload", "preload"])
def test_two_gunicorn_workers_add_up_and_a_killed_worker_is_counted_once(tmp_path, preload):
    """The counts equal the requests sent, from whichever worker answers the scrape,
    also after a worker was killed and replaced (its counts kept, never doubled)."""
    path = write_toml(tmp_path / "pixel.toml", config(tmp_path))
    env = {**environment(), "PIXEL_WSGI_CONFIG": str(path)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    args = ["-c", "python:pixel_wsgi.gunicorn_hooks", "--worker-class", "sync", *preload]
    with gunicorn("pixel_wsgi:create_app()", output=tmp_path / "gunicorn.log", env=env, workers=2, threads=1, args=args) as server:
        directory = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", server.log()).group(1)

        def send(n: int) -> int:
            return http_get(server.url + track(n))[0]

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(send, range(200)))
        assert statuses == [200] * 200
        # Both workers served: each wrote its own counter file.
        assert len(glob.glob(os.path.join(directory, "counter_*.db"))) == 2

        worker = int(re.findall(r"Booting worker with pid: (\d+)", server.log())[0])
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while server.log().count("Booting worker") < 3:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(send, range(200, 300)))
        assert statuses == [200] * 100

        for _ in range(6):  # whichever worker answers, the same sums
            status, _, body = http_get(server.url + "/metrics")
            assert status == 200
            scrape = samples(body.decode())
            assert value(scrape, "pixel_requests_total", endpoint="track", status="200", source="site") == 300
            assert value(scrape, "pixel_deliveries_total", destination="store", outcome="delivered") == 300
            assert value(scrape, "pixel_delivery_seconds_count", destination="store") == 300
            assert value(scrape, "pixel_breaker_open", destination="store") == 0
        server.stop()
    # The private directory goes with the gunicorn that made it.
    assert not os.path.exists(directory)


def test_metrics_without_the_multiprocess_directory_under_gunicorn_warn_once(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    app = PixelApp(config(tmp_path))
    client = TestApp(app, extra_environ={"REMOTE_ADDR": "127.0.0.1", "SERVER_SOFTWARE": "gunicorn/23.0.0"})
    with caplog.at_level("WARNING", logger="pixel_wsgi.metrics"):
        client.get("/metrics")
        client.get("/metrics")
    app.close()
    assert [r.getMessage() for r in caplog.records].count(
        "metrics under gunicorn without $PROMETHEUS_MULTIPROC_DIR count this worker only: run gunicorn with -c python:pixel_wsgi.gunicorn_hooks"
    ) == 1
