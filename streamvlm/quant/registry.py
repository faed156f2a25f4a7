"""KV codec names -> codec objects, through ``streamvlm.registry.KV_CODECS``.

Each codec class registers itself where it is defined (``class VidKVCodec(KVCodec,
name="vidkv")``); importing this module imports every codec module, in the order their
names are listed (the published methods before streamvlm's own ``vidkv``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from ..registry import KV_CODECS
from .base import KVCodec, QuantError

# Importing the codec modules registers their codecs; the published methods first, so
# that names are listed (errors, tables, benchmarks) before streamvlm's own ``vidkv``.
from . import cast, intn, kivi, vidkv_paper, vidkv  # noqa: F401  # isort: skip

# names that encoded tensors carry for non-default KIVI widths, so that
# ``get_kv_codec(enc.codec)`` always finds a decoder; not configuration names (a block
# codec picks its width by name only at the default, ``kivi2``)
_FIXED_OPTIONS: dict[str, tuple[str, dict]] = {
    "kivi4": ("kivi2", {"bits": 4}),
    "kivi8": ("kivi2", {"bits": 8}),
}


def kv_codec_options(name: str) -> tuple[str, ...]:
    """Option names ``get_kv_codec(name, **options)`` accepts."""
    return tuple(inspect.signature(_factory(name)).parameters)


def _factory(name: str) -> Callable[..., KVCodec]:
    if name not in KV_CODECS:
        raise QuantError(f"unknown codec {name!r}; choose one of {', '.join(KV_CODECS.names())}")
    return KV_CODECS.get(name)


def get_kv_codec(name: str, **options) -> KVCodec:
    """A new KV codec object by name (an old alias such as ``vidkv-ref`` is accepted).

    Stateful codecs keep per-layer state: one object per model/stream.
    """
    if name in _FIXED_OPTIONS:
        name, fixed = _FIXED_OPTIONS[name]
        if "bits" in options and options["bits"] != fixed["bits"]:
            raise QuantError(
                f"codec kivi{fixed['bits']} has bits={fixed['bits']}; do not pass bits={options['bits']}"
            )
        options = {**options, **fixed}
    factory = _factory(name)
    unknown = sorted(set(options) - set(kv_codec_options(name)))
    if unknown:
        valid = ", ".join(kv_codec_options(name)) or "none"
        raise QuantError(f"codec {name!r} has no option {', '.join(unknown)}; its options are: {valid}")
    return factory(**options)
