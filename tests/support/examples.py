"""Import the modules of ``examples/`` the way their docstrings run them.

The folder is not a package: gunicorn gets ``--pythonpath examples`` and imports
``pyramid_site``; tests do the same::

    from tests.support.examples import EXAMPLES, load_example
    app = load_example("pyramid_site").create_app(pixel_app)
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    """``examples/{name}.py`` as the top-level module ``name`` (Pyramid needs a real module)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)
