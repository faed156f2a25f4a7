"""The Gradio live demo (``streamvlm demo``): webcam or video file in, chat and memory panel out.

Needs the ``demo`` extra (Gradio). Names are imported on first use, so ``demos.cli``
(the command's parser) loads without Gradio or torch. See ``docs/demo.md``.
"""

from importlib import import_module
from typing import TYPE_CHECKING

_LAZY = {
    "build_demo": "streamvlm.demos.app",
    "mount_demo": "streamvlm.demos.app",
    "DemoSession": "streamvlm.demos.state",
    "DemoSessions": "streamvlm.demos.state",
    "ThumbnailRing": "streamvlm.demos.thumbnails",
}

if TYPE_CHECKING:
    from .app import build_demo, mount_demo
    from .state import DemoSession, DemoSessions
    from .thumbnails import ThumbnailRing


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'streamvlm.demos' has no attribute {name!r}")


__all__ = ["DemoSession", "DemoSessions", "ThumbnailRing", "build_demo", "mount_demo"]
