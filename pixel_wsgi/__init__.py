"""pixel-wsgi: the RudderStack Pixel API as a WSGI app and middleware."""

from __future__ import annotations

__version__ = "0.1.0"

from .app import PixelApp, create_app  # noqa: E402
from .config import Config, load_config  # noqa: E402
from .errors import ConfigError  # noqa: E402
from .middleware import PixelMiddleware  # noqa: E402
from .urls import pixel_url  # noqa: E402

__all__ = ["Config", "ConfigError", "PixelApp", "PixelMiddleware", "__version__", "create_app", "load_config", "pixel_url"]
