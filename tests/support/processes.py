"""Subprocess helpers: free ports, the ``pixel-wsgi`` command, a config file on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .servers import free_port

__all__ = ["environment", "free_port", "run_at_once", "run_cli", "toml_value", "write_toml"]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def write_toml(path: Path, config: dict[str, Any]) -> Path:
    """Write a config dict of the usual shape (tables of scalars, [[sources]]) as TOML."""
    lines: list[str] = []
    for key, value in config.items():
        if not isinstance(value, (dict, list)) or (isinstance(value, list) and not all(isinstance(v, dict) for v in value)):
            lines.append(f"{key} = {toml_value(value)}")
    for key, value in config.items():
        if key == "sources":
            for source in value:
                lines.append("[[sources]]")
                lines.extend(f"{k} = {toml_value(v)}" for k, v in source.items())
        elif key == "destinations":
            for name, options in value.items():
                lines.append(f"[destinations.{json.dumps(name)}]")
                lines.extend(f"{k} = {toml_value(v)}" for k, v in options.items())
        elif isinstance(value, dict):
            lines.append(f"[{key}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in value.items())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def environment() -> dict[str, str]:
    """The environment for child processes: this checkout importable, no inherited config."""
    env = {k: v for k, v in os.environ.items() if k != "PIXEL_WSGI_CONFIG"}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``pixel-wsgi ARGS`` in a subprocess (as ``python -m pixel_wsgi``), output captured."""
    return subprocess.run([sys.executable, "-m", "pixel_wsgi", *args], capture_output=True, text=True, timeout=timeout, env=environment())


def run_at_once(script: str, argument_lists: list[list[str]], timeout: float = 60) -> None:
    """``python -c script ARGS`` once per argument list, all at the same time; each must
    exit 0 (its stderr is the failure message). Any left running is killed."""
    processes = [
        subprocess.Popen([sys.executable, "-c", script, *arguments], env=environment(), stderr=subprocess.PIPE)
        for arguments in argument_lists
    ]
    try:
        for process in processes:
            _, stderr = process.communicate(timeout=timeout)
            assert process.returncode == 0, stderr.decode()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
