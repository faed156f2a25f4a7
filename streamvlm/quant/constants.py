"""Constant tables the codecs use on whatever device they run on, uploaded once per device.

A log8 or gain table indexed on a GPU must live there; ``table.to(device)`` in the coding
function would upload it on every call (a host-to-device copy per field per layer, which the
GPU waits on). The copies are kept per device instead, made on first use.
"""

from __future__ import annotations

import torch


class DeviceConstant:
    """A constant CPU tensor and its copy on each device it was asked for.

    The tensor must never be modified (every caller shares it)."""

    def __init__(self, table: torch.Tensor) -> None:
        self.cpu = table.cpu()
        self._copies: dict[torch.device, torch.Tensor] = {self.cpu.device: self.cpu}

    def on(self, device: torch.device | str) -> torch.Tensor:
        """The table on ``device``: uploaded the first time, the same tensor afterwards."""
        device = torch.device(device)
        table = self._copies.get(device)
        if table is None:
            # two threads may both upload on first use: one copy wins, both are equal
            table = self._copies.setdefault(device, self.cpu.to(device))
        return table
