"""Kernels for the KV-cache codecs (Triton for CUDA, numba for CPUs), each with its PyTorch
reference, and the dispatch.

``decode(enc, codec)`` decodes a ``kivi2``/``kivi4``/``kivi8`` or ``vidkv`` block with a fused
Triton kernel when the target device is CUDA and triton imports, with a numba kernel when it
is the CPU and numba imports (``pip install 'streamvlm[cpu]'``), and with the reference
(``codec.decode``) elsewhere, optionally straight into a preallocated ``out=``;
``encode(codec, x, kind, layer)`` does the same for encoding (numba on CPUs, the reference
elsewhere); ``pack_bits``/``unpack_bits``/``pack_trits``/``unpack_trits`` run Triton or the
reference for ``streamvlm.quant.packing``. ``STREAMVLM_KERNELS=auto|reference|triton|cpu`` (or
``backend=``) overrides the choice. Every path gives the same bytes and floats. Importing
this package imports neither triton nor numba. See docs/quantization.md, "Kernels".

Layout: ``<name>_triton.py`` and ``<name>_cpu.py`` hold a format's kernels and launchers
(imported only when used; ``triton_common.py`` and ``cpu_common.py`` what they share),
``reference.py`` the PyTorch functions they are tested against, ``backend.py`` the choice,
``dispatch.py`` the entry points.
"""

from .backend import BACKEND_ENV, BACKENDS, choose, cpu_kernels_available, triton_available, use_triton
from .dispatch import (
    decode,
    encode,
    has_kernel,
    pack_bits,
    pack_trits,
    path_for,
    standard_layout,
    unpack_bits,
    unpack_trits,
)

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "choose",
    "cpu_kernels_available",
    "decode",
    "encode",
    "has_kernel",
    "path_for",
    "standard_layout",
    "pack_bits",
    "pack_trits",
    "triton_available",
    "unpack_bits",
    "unpack_trits",
    "use_triton",
]
