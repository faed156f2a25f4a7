"""The unit every source yields."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One decoded RGB frame.

    ``rgb`` is ``(H, W, 3)`` uint8 with any container rotation already applied; ``t`` is
    the presentation time in seconds from the container's PTS (relative to the first
    frame of the stream); ``index`` counts decoded frames in presentation order.
    """

    rgb: np.ndarray
    t: float
    index: int
