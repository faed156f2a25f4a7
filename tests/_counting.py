"""Counting what would stall a GPU, on any device: host reads, device-changing copies, host-made tensors.

On CUDA every read of a tensor's value on the host (``item``, ``int``, ``float``, ``bool``,
``tolist``, ``numpy``) waits for the device to finish, and every copy between host and
device is a transfer. Tests run on a CPU, where none of that costs anything and no copy
changes device, so the counter also counts what *would* cross on CUDA:

- ``host_reads``: ``aten._local_scalar_dense`` (what ``item`` / ``int`` / ``float`` /
  ``bool`` dispatch to) and ``tolist`` / ``numpy`` calls, which read values without a
  dispatched op on a CPU.
- ``device_copies``: ``aten._to_copy`` / ``copy_`` whose source and result devices differ
  (real transfers, on CUDA), plus ``cpu()`` / ``numpy()`` / ``tolist()`` of a tensor that
  is already on the CPU (on CUDA the same call would be a download; on the real device it
  is counted by the dispatched copy instead, so nothing is counted twice).
- ``host_tensors``: tensors made from Python or NumPy data (``torch.tensor``,
  ``as_tensor``, ``from_numpy``) and factory calls (``arange``, ``zeros``, ...) given no
  ``device``: they are born on the host, so a model on CUDA needs an upload for each.
  This is the "fake device" check: code that builds its tensors on the model's device
  names the device, and the count holds on a CPU exactly as on CUDA.

Usage::

    with TransferCounter() as counts:
        ...
    assert counts.host_reads <= n
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# Tensor methods that read values on the host (and download them, from a device).
_READS = {torch.Tensor.tolist, torch.Tensor.numpy}
_DOWNLOADS = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist}
# Functions that make a tensor from host data: always born on the host.
_FROM_HOST_DATA = {torch.tensor, torch.as_tensor, torch.from_numpy}
# Factories that make a tensor on the device they are given (the default device, the host, without one).
_FACTORIES = {
    torch.arange,
    torch.zeros,
    torch.ones,
    torch.full,
    torch.empty,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.linspace,
}
_COPIES = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}


@dataclass
class TransferCounts:
    """What ran under one ``TransferCounter``; ``ops`` names each counted event, in order."""

    host_reads: int = 0
    device_copies: int = 0
    host_tensors: int = 0
    ops: list[str] = field(default_factory=list)

    def note(self, kind: str, what: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        self.ops.append(f"{kind}: {what}")


class _FunctionCounter(TorchFunctionMode):
    def __init__(self, counts: TransferCounts):
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if func in _READS:
            self.counts.note("host_reads", name)
        if func in _DOWNLOADS and args[0].device.type == "cpu":
            self.counts.note("device_copies", name)
        if func in _FROM_HOST_DATA or (func in _FACTORIES and kwargs.get("device") is None):
            self.counts.note("host_tensors", name)
        return func(*args, **kwargs)


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, counts: TransferCounts):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.ops.aten._local_scalar_dense.default:
            self.counts.note("host_reads", str(func))
        elif func in _COPIES:
            source = args[1] if func is torch.ops.aten.copy_.default else args[0]
            result = args[0] if func is torch.ops.aten.copy_.default else out
            if source.device != result.device:
                self.counts.note("device_copies", f"{func} {source.device}->{result.device}")
        return out


class TransferCounter:
    """A context manager counting host reads, device-changing copies and host-made tensors."""

    def __init__(self) -> None:
        self.counts = TransferCounts()
        self._modes = [_FunctionCounter(self.counts), _DispatchCounter(self.counts)]

    def __enter__(self) -> TransferCounts:
        for mode in self._modes:
            mode.__enter__()
        return self.counts

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
