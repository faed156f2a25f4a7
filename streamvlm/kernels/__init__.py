"""Triton kernels for the KV-cache codecs, each with its PyTorch reference, and the dispatch.

``decode(enc, codec)`` decodes a ``kivi2``/``kivi4``/``kivi8`` or ``vidkv`` block with a fused
Triton kernel when the target device is CUDA and triton imports, and with the reference
(``codec.decode``) elsewhere; ``pack_bits``/``unpack_bits``/``pack_trits``/``unpack_trits`` do the
same for ``streamvlm.quant.packing``. ``STREAMVLM_KERNELS=auto|reference|triton`` (or
``backend=``) overrides the choice. Both paths give the same bytes and floats. Importing this
package never imports triton. See docs/quantization.md, "Kernels".

Layout: ``<name>_triton.py`` holds a format's kernels and launchers (imported only when
used), ``reference.py`` the PyTorch functions they are tested against, ``backend.py`` the
choice, ``dispatch.py`` the entry points.
"""

from .backend import BACKEND_ENV, BACKENDS, triton_available, use_triton
from .dispatch import decode, has_kernel, pack_bits, pack_trits, unpack_bits, unpack_trits

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "decode",
    "has_kernel",
    "pack_bits",
    "pack_trits",
    "triton_available",
    "unpack_bits",
    "unpack_trits",
    "use_triton",
]
