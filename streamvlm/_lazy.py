"""Names a package exports but imports only on first use (PEP 562 module ``__getattr__``).

The packages whose modules pull in torch, transformers, FastAPI or Gradio export their
public names this way, so that importing the package (and building the CLI parser) stays
cheap until one of those names is really used.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_getattr(package: str, names: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``names`` maps each exported name to the
    module defining it; the first access imports it and caches it in ``namespace``."""

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(import_module(names[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
