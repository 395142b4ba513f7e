"""Loads a function's SCF handler file the way SCF does: by path, not as a package."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent.parent


def load_handler(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{name}_index", ROOT / "functions" / name / "index.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
