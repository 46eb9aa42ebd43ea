"""The package version, in a module of its own so that any module can import it without
importing the package (whose ``__init__`` imports the app, which imports everything)."""

__version__ = "0.1.0"
