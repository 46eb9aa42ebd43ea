"""pixel-wsgi: the RudderStack Pixel API as a WSGI app and middleware."""

from __future__ import annotations

from .app import PixelApp, create_app
from .config import Config, load_config
from .errors import ConfigError
from .middleware import PixelMiddleware
from .urls import pixel_url
from .version import __version__

__all__ = ["Config", "ConfigError", "PixelApp", "PixelMiddleware", "__version__", "create_app", "load_config", "pixel_url"]
