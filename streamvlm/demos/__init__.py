"""The Gradio live demo (``streamvlm demo``): webcam or video file in, chat and memory panel out.

Needs the ``demo`` extra (Gradio). Names are imported on first use, so ``demos.cli``
(the command's parser) loads without Gradio or torch. See ``docs/demo.md``.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr

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


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = ["DemoSession", "DemoSessions", "ThumbnailRing", "build_demo", "mount_demo"]
