"""Fixtures shared by every test module. Helpers for servers live in tests/support/."""

from __future__ import annotations

import pytest
from webtest import TestApp

from pixel_wsgi.testing import memory_app

WRITE_KEY = "test-write-key"


@pytest.fixture
def pixel():
    """A ``PixelApp`` with one source and a memory destination, and its event list."""
    app, events = memory_app(WRITE_KEY)
    yield app, events
    app.close()


@pytest.fixture
def client(pixel):
    app, _ = pixel
    return TestApp(app)


@pytest.fixture
def events(pixel):
    return pixel[1]
