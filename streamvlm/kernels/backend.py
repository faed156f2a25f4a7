"""Which implementation runs: a Triton kernel, a numba CPU kernel, or the PyTorch reference.

Rules (``choose``; ``use_triton`` is ``choose(...) == "triton"``), in order:

1. ``backend`` argument if given, else the ``STREAMVLM_KERNELS`` environment variable,
   else ``"auto"``.
2. ``"reference"``: always the PyTorch reference (``streamvlm.quant``).
3. ``"auto"``: Triton when the target device is CUDA and ``import triton`` works; the numba
   CPU kernels (``*_cpu.py``) when it is the CPU and ``import numba`` works (the ``cpu``
   extra); the reference everywhere else (MPS, machines without either).
4. ``"cpu"``: the numba kernels for CPU work (the reference for other devices); an error if
   numba does not import.
5. ``"triton"``: always Triton; an error if triton does not import. CPU tensors then need
   Triton's interpreter: ``TRITON_INTERPRET=1`` set before triton is first imported
   (``@triton.jit`` chooses compiled or interpreted when a function is defined, triton's
   own library included). That is how the tests run the kernels on machines without a GPU.

Nothing here imports triton until a CUDA tensor (or ``"triton"``) asks for it, nor numba until
CPU work does, so importing ``streamvlm.kernels`` never fails and costs nothing on machines
without them.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from ..errors import ConfigError

BACKEND_ENV = "STREAMVLM_KERNELS"
BACKENDS = ("auto", "reference", "triton", "cpu")
# what runs: the names ``choose`` returns
REFERENCE, TRITON, CPU = "reference", "triton", "cpu"


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when ``import triton`` works (cached; ``triton_available.cache_clear()`` re-checks)."""
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install raises more than ImportError; either way: no triton
        return False
    return True


@functools.lru_cache(maxsize=1)
def cpu_kernels_available() -> bool:
    """True when ``import numba`` works (cached; ``cpu_kernels_available.cache_clear()`` re-checks)."""
    try:
        import numba  # noqa: F401
    except Exception:  # as for triton: a broken install counts as none
        return False
    return True


def requested_backend(backend: str | None = None) -> str:
    """``backend``, else ``$STREAMVLM_KERNELS``, else ``"auto"``; validated."""
    choice = backend if backend is not None else os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        source = "backend" if backend is not None else BACKEND_ENV
        raise ConfigError(f"{source}={choice!r} is not a kernel backend; use one of {', '.join(BACKENDS)}")
    return choice


def choose(device: torch.device | str, backend: str | None = None) -> str:
    """What runs work whose result lives on ``device``: ``"triton"``, ``"cpu"`` or ``"reference"``
    (rules above)."""
    choice = requested_backend(backend)
    kind = device.type if isinstance(device, torch.device) else torch.device(device).type
    if choice == REFERENCE:
        return REFERENCE
    if choice == "auto":
        if kind == "cuda" and triton_available():
            return TRITON
        return CPU if kind == "cpu" and cpu_kernels_available() else REFERENCE
    if choice == CPU:
        if not cpu_kernels_available():
            raise ConfigError(
                f"kernel backend 'cpu' was requested but numba does not import; "
                f"pip install 'streamvlm[cpu]' or set {BACKEND_ENV}=auto"
            )
        return CPU if kind == "cpu" else REFERENCE
    return TRITON if use_triton(device, backend) else REFERENCE


def use_triton(device: torch.device | str, backend: str | None = None) -> bool:
    """Whether work whose result lives on ``device`` runs the Triton kernel (rules above)."""
    choice = requested_backend(backend)
    if choice in (REFERENCE, CPU):
        return False
    if choice == "auto":
        return torch.device(device).type == "cuda" and triton_available()
    if not triton_available():
        raise ConfigError(
            "kernel backend 'triton' was requested but triton does not import; "
            f"pip install triton (Linux x86_64) or set {BACKEND_ENV}=auto"
        )
    return True


def check_runnable(kernel: object, device: torch.device) -> None:
    """Raise unless ``kernel`` can run on ``device``: compiled kernels need CUDA tensors."""
    if device.type != "cuda" and type(kernel).__name__ != "InterpretedFunction":
        raise ConfigError(
            f"Triton kernels run on CUDA tensors, not {device.type}; for CPU tensors set "
            "TRITON_INTERPRET=1 before triton is first imported (it runs them in Triton's interpreter)"
        )


def launch_device(device: torch.device | str) -> torch.device:
    """``device`` with its index filled in (``cuda`` -> ``cuda:<current>``), for allocations and caches."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` current while launching: Triton launches on the current CUDA device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
