"""The codec interface: one layer's keys or values of one block in, named CPU tensors out.

A codec never hides bytes: everything decode needs that is specific to the block (packed
codes, scales, zero points, masks, indices) is a tensor in ``EncodedTensor.tensors``, so
``bits_per_element`` is the honest storage cost. State a codec keeps once per layer (not
per block) is reported by ``shared_bits(layer)`` and can be saved with ``shared_state``.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from ..errors import StreamVLMError
from ..registry import KV_CODECS, Registered
from ..transfer import to_host

KINDS = ("key", "value")
INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP16_MAX = 65504.0


class QuantError(StreamVLMError, ValueError):
    """Bad input or option for a codec; the message is one line naming the problem and the fix."""


# True while a codec's ``_encode`` runs: the codes it packs come from its own rounding and
# clamping, so ``packing`` need not read their range back from the device to check it.
_CODEC_CODES: ContextVar[bool] = ContextVar("streamvlm_codec_codes", default=False)


def codes_in_range_guaranteed() -> bool:
    """Whether codes being packed now were made by a codec (in range by construction).

    ``STREAMVLM_CHECK_CODES=1`` turns the guarantee off, so every pack checks its range
    (a debug aid for a new codec)."""
    return _CODEC_CODES.get() and os.environ.get("STREAMVLM_CHECK_CODES") != "1"


@contextmanager
def _codec_codes() -> Iterator[None]:
    token = _CODEC_CODES.set(True)
    try:
        yield
    finally:
        _CODEC_CODES.reset(token)


def check_group_size(codec: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise QuantError(f"{codec}: group_size must be a positive int, got {value!r}")
    return value


def check_fraction(codec: str, option: str, value: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise QuantError(f"{codec}: {option} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class EncodedTensor:
    """One encoded ``[kv_heads, tokens, head_dim]`` tensor of keys or values.

    ``layer`` is the layer it was encoded for; stateful codecs (``vidkv``) need it to find
    their per-layer state at decode time. It is bookkeeping, not stored payload (the tier
    that stores a block knows each layer's index anyway).
    """

    codec: str
    kind: str
    shape: tuple[int, ...]
    tensors: dict[str, torch.Tensor]
    layer: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def stored_bits(self) -> int:
        """Bits of every stored tensor (payload and metadata)."""
        return sum(t.numel() * t.element_size() * 8 for t in self.tensors.values())

    @property
    def bits_per_element(self) -> float:
        """``stored_bits / prod(shape)``: includes all per-block metadata, excludes per-layer state."""
        return self.stored_bits / self.numel

    def bits_by_tensor(self) -> dict[str, int]:
        """Stored bits of each named tensor, for bit-accounting tables."""
        return {name: t.numel() * t.element_size() * 8 for name, t in self.tensors.items()}


class KVCodec(Registered, ABC):
    """Encodes one layer's keys or values of one block; decodes them back.

    Subclasses implement ``_encode`` (input already validated and on its own device) and
    ``_decode`` (returns float32 on the requested device), and register by name:
    ``class MyCodec(KVCodec, name="mine")`` makes ``get_kv_codec("mine")`` build one;
    ``aliases`` are old names still accepted, by the registry and by ``decode`` for
    tensors encoded under them. A class built for several names (``IntCodec``) omits
    ``name`` and registers a factory per name with ``KV_CODECS.add``.
    """

    registry = KV_CODECS
    # Largest magnitude the codec can store; fp16 metadata overflows beyond FP16_MAX.
    max_abs: float | None = FP16_MAX

    def reads(self, codec: str) -> bool:
        """Whether tensors that name ``codec`` as their encoder are this codec's to decode."""
        return codec == self.name or codec in self.aliases

    def check_decodes(self, enc: EncodedTensor) -> None:
        """Raise ``QuantError`` unless ``enc`` was encoded by this codec (under a current or old name)."""
        if not self.reads(enc.codec):
            raise QuantError(
                f"tensor was encoded by {enc.codec!r}; decode it with that codec, not {self.name!r}"
            )

    def encode(self, x: torch.Tensor, kind: str, layer: int = 0) -> EncodedTensor:
        """Encode ``x`` ``[kv_heads, tokens, head_dim]`` (keys post-RoPE) of layer ``layer``;
        the tensors come back on the CPU, moved in one piece."""
        enc = self.encode_on_device(x, kind, layer)
        return EncodedTensor(enc.codec, enc.kind, enc.shape, to_host(enc.tensors), enc.layer)

    def encode_on_device(
        self, x: torch.Tensor, kind: str, layer: int = 0, *, values_checked: bool = False
    ) -> EncodedTensor:
        """Like ``encode``, leaving the tensors on ``x``'s device (a block codec moves a whole
        block's at once). ``values_checked=True``: the caller has already run
        ``check_values`` on ``x`` (once for a whole block), so no value is read back here."""
        self.check_input(x, kind, layer)
        if not values_checked:
            self.check_values([x])
        with _codec_codes():
            tensors = self._encode(x.detach(), kind, layer)
        tensors = {name: t.detach().contiguous() for name, t in tensors.items()}
        return EncodedTensor(self.name, kind, tuple(int(s) for s in x.shape), tensors, layer)

    def decode(
        self, enc: EncodedTensor, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """The ``[kv_heads, tokens, head_dim]`` tensor back, on ``device`` in ``dtype``."""
        self.check_decodes(enc)
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise QuantError(f"decode dtype must be a floating torch.dtype, got {dtype!r}")
        return self._decode(enc, torch.device(device)).to(dtype)

    @abstractmethod
    def _encode(self, x: torch.Tensor, kind: str, layer: int) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def _decode(self, enc: EncodedTensor, device: torch.device) -> torch.Tensor: ...

    # Per-layer state (stateless codecs have none).
    def shared_bits(self, layer: int) -> int:
        """Bits stored once for ``layer`` (not per block); 0 for stateless codecs."""
        return sum(t.numel() * t.element_size() * 8 for t in self.shared_state(layer).values())

    def shared_state(self, layer: int) -> dict[str, torch.Tensor]:
        """CPU tensors holding the state of ``layer``, to persist next to the blocks."""
        return {}

    def load_shared_state(self, layer: int, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``shared_state(layer)`` returned (e.g. after a restart)."""
        if tensors:
            raise QuantError(f"codec {self.name!r} keeps no per-layer state; do not load any")

    def _validate(self, x: torch.Tensor, kind: str, layer: int) -> None:
        self.check_input(x, kind, layer)
        self.check_values([x])

    def check_input(self, x: torch.Tensor, kind: str, layer: int) -> None:
        """Raise ``QuantError`` for a tensor, kind or layer ``encode`` refuses, reading no values."""
        if not isinstance(x, torch.Tensor):
            raise QuantError(f"{self.name}: expected a torch.Tensor, got {type(x).__name__}")
        if kind not in KINDS:
            raise QuantError(f"{self.name}: kind must be 'key' or 'value', got {kind!r}")
        if not isinstance(layer, int) or layer < 0:
            raise QuantError(f"{self.name}: layer must be an int >= 0, got {layer!r}")
        if x.dim() != 3:
            raise QuantError(
                f"{self.name}: expected [kv_heads, tokens, head_dim], got shape {tuple(x.shape)}; "
                "pass one layer of one block (drop the batch dimension)"
            )
        heads, tokens, head_dim = x.shape
        if heads < 1 or tokens < 1:
            raise QuantError(
                f"{self.name}: shape {tuple(x.shape)} has no heads or no tokens; encode a non-empty block"
            )
        if head_dim < 2 or head_dim % 2:
            raise QuantError(f"{self.name}: head_dim must be even and >= 2, got {head_dim}")
        if x.dtype not in INPUT_DTYPES:
            raise QuantError(
                f"{self.name}: dtype must be float16, bfloat16 or float32, got {x.dtype}; cast first"
            )

    def check_values(self, xs: Sequence[torch.Tensor]) -> None:
        """Raise ``QuantError`` unless every tensor of ``xs`` (all on one device) is finite and
        within ``max_abs``: one value read back from the device, however many tensors."""
        # aminmax reads x once without the |x| temporary (a full copy per encode); a nan
        # anywhere makes both nan, which the finiteness check below rejects
        peaks = []
        for x in xs:
            low, high = torch.aminmax(x.detach())
            peaks.append(torch.maximum(-low.float(), high.float()))
        amax = float(torch.stack(peaks).max())
        if not math.isfinite(amax):
            raise QuantError(f"{self.name}: input holds inf or nan; only finite KV can be encoded")
        if self.max_abs is not None and amax > self.max_abs:
            raise QuantError(
                f"{self.name}: |x| reaches {amax:g}, beyond the {self.max_abs:g} its fp16 fields hold; "
                "use the bf16 codec for such tensors"
            )

    def check_values_within(self, xs: Sequence[torch.Tensor], bound: float) -> None:
        """``check_values(xs)``, reading no value when ``bound`` shows them fine: an upper bound
        of their ``|x|`` that is nan or inf wherever they hold a nan or an inf (a kernel's running
        peak, the norms it computes anyway). Otherwise the full check decides, and words the error."""
        limit = math.inf if self.max_abs is None else self.max_abs
        # a bound from a sum of squares carries rounding: within 0.1% of the limit, look at the values
        if not (bound < math.inf and bound <= 0.999 * limit):
            self.check_values(xs)
