"""Moving a block's tensors between host and device in one piece.

A block that leaves the device tier is dozens to hundreds of small tensors (vidkv stores 19
a layer: 532 for a 28-layer block). Copied one ``.to("cpu")`` at a time, each is a blocking
transfer and each pin a separate page-locked allocation. Here the tensors of one direction
are packed into one flat ``uint8`` buffer on their own device, that buffer crosses once
(into page-locked memory, asynchronously, on a side stream, when CUDA is present), and the
tensors come back as views of it: ``pack_tensors`` / ``unpack_tensors`` are the mechanism,
``to_host`` / ``to_device`` the two moves built on it.

``transfers`` counts the buffers moved (or packed on the host), so tests can assert one per
block on a machine with no GPU, where no copy changes device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Every view starts at a multiple of this many bytes, so views of any dtype are aligned
# (16 also suits vectorised device loads).
ALIGN = 16

#: buffers moved by ``to_host`` / ``to_device`` since the process started (see module doc)
transfers = 0


@dataclass(frozen=True)
class Slot:
    """Where one tensor lies in a packed buffer."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # bytes
    nbytes: int


Layout = tuple[Slot, ...]


def plan(tensors: dict[str, torch.Tensor]) -> tuple[Layout, int]:
    """The slots of ``tensors`` in a packed buffer (in dict order, each aligned) and its size."""
    slots, end = [], 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        slots.append(Slot(name, t.dtype, tuple(t.shape), end, nbytes))
        end += -(-nbytes // ALIGN) * ALIGN
    return tuple(slots), end


def pack_tensors(
    tensors: dict[str, torch.Tensor], out: torch.Tensor | None = None
) -> tuple[torch.Tensor, Layout]:
    """``tensors`` (all on one device) copied into one flat ``uint8`` buffer on that device,
    or into ``out`` (a ``uint8`` buffer at least as long), and the layout that
    ``unpack_tensors`` reads them back with."""
    layout, size = plan(tensors)
    if out is None:
        device = next(iter(tensors.values())).device if tensors else torch.device("cpu")
        out = torch.empty(size, dtype=torch.uint8, device=device)
    for slot, t in zip(layout, tensors.values(), strict=True):
        if slot.nbytes:
            out[slot.offset : slot.offset + slot.nbytes].copy_(_bytes_of(t))
    return out, layout


def unpack_tensors(buffer: torch.Tensor, layout: Layout) -> dict[str, torch.Tensor]:
    """Views of ``buffer`` as the tensors ``layout`` describes (no copy)."""
    return {slot.name: _view(buffer, slot) for slot in layout}


def to_host(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` as contiguous CPU tensors, moved one buffer per device they lie on.

    From a CUDA device the packed buffer is copied into page-locked memory with
    ``non_blocking=True`` on a side stream that first waits for the work producing it; the
    call returns once the copy is done (the caller keeps the result in host RAM). When CUDA
    is present, tensors already on the CPU are packed into one page-locked buffer too, so a
    block is pinned once, not per tensor; without CUDA they stay as they are.
    """
    global transfers
    by_device: dict[torch.device, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        by_device.setdefault(t.device, {})[name] = t
    moved: dict[str, torch.Tensor] = {}
    for device, group in by_device.items():
        transfers += 1
        if device.type == "cpu" and not torch.cuda.is_available():
            moved.update((name, t.contiguous()) for name, t in group.items())
        else:
            moved.update(_download(group))
    return {name: moved[name] for name in tensors}


def _download(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    packed, layout = pack_tensors(tensors)
    host = torch.empty(packed.numel(), dtype=torch.uint8, device="cpu", pin_memory=torch.cuda.is_available())
    if packed.device.type == "cuda":
        stream = _side_stream(packed.device)
        stream.wait_stream(torch.cuda.current_stream(packed.device))
        with torch.cuda.stream(stream):
            host.copy_(packed, non_blocking=True)
        stream.synchronize()  # packed may be freed (and host read) as soon as this returns
    else:
        host.copy_(packed)
    return unpack_tensors(host, layout)


def is_pinned(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether every tensor is already in page-locked host memory."""
    return all(t.is_pinned() for t in tensors.values())


def to_device(tensors: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """``tensors`` on ``device``, contiguous, as views of one buffer moved in one copy
    (``non_blocking`` from page-locked memory, ordered on the current stream, so kernels
    launched after it read the data). Tensors already on ``device`` are not moved."""
    global transfers
    device = torch.device(device)
    if not tensors or all(t.device == device for t in tensors.values()):
        return {name: t.contiguous() for name, t in tensors.items()}
    _check_one_device(tensors)
    source = next(iter(tensors.values()))
    if _shares_one_buffer(tensors):
        buffer = torch.empty(0, dtype=torch.uint8, device=source.device).set_(source.untyped_storage())
        layout = tuple(
            Slot(name, t.dtype, tuple(t.shape), t.storage_offset() * t.element_size(), t.nbytes)
            for name, t in tensors.items()
        )
    else:
        buffer, layout = pack_tensors(tensors)
    transfers += 1
    moved = buffer.to(device, non_blocking=buffer.is_pinned())
    return unpack_tensors(moved, layout)


def _bytes_of(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _view(buffer: torch.Tensor, slot: Slot) -> torch.Tensor:
    if slot.nbytes == 0:
        return torch.empty(slot.shape, dtype=slot.dtype, device=buffer.device)
    raw = buffer[slot.offset : slot.offset + slot.nbytes]
    return raw.view(slot.dtype).view(slot.shape) if slot.shape else raw.view(slot.dtype)[0]


def _check_one_device(tensors: dict[str, torch.Tensor]) -> None:
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        raise ValueError(f"tensors to move in one piece lie on several devices {sorted(map(str, devices))}")


def _shares_one_buffer(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether every tensor is a contiguous view of one storage no larger than them all
    plus alignment (what ``to_host`` returns): then that storage moves as it is."""
    storages = {t.untyped_storage().data_ptr() for t in tensors.values()}
    if len(storages) != 1 or not all(t.is_contiguous() for t in tensors.values()):
        return False
    size = next(iter(tensors.values())).untyped_storage().nbytes()
    return size <= sum(-(-t.nbytes // ALIGN) * ALIGN for t in tensors.values()) + ALIGN


_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """One copy stream per device, made on first use."""
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return _SIDE_STREAMS[device]
