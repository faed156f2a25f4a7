"""Block codecs backed by ``streamvlm.quant``: each layer's keys and values encoded on their own.

Every KV codec of ``KV_CODECS`` is a block codec of the same name (and old aliases) in
``BLOCK_CODECS``. ``QuantizedCodec("vidkv")`` encodes layer ``i``'s keys with ``kind="key", layer=i`` and its
values with ``kind="value"``, and stores the resulting tensors as ``k.{i}.{field}`` and
``v.{i}.{field}`` beside the block's positions, mask and summary. The block's JSON meta
(``kv_shape``, written by ``BlockCodec.encode``) gives back the shape the packed fields need.
Encoding and decoding go through ``streamvlm.kernels.encode`` / ``decode``: numba kernels
for CPU tensors, a fused Triton decode kernel on CUDA, where the codec has them, the PyTorch
reference elsewhere (all give the same bytes and floats). ``decode_layers(..., out=)``
decodes each layer straight into preallocated tensors, e.g. the block's slice of the cache
attention reads.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from functools import partial

import torch

from .. import kernels, transfer
from ..kernels.backend import CPU
from ..quant.base import EncodedTensor, KVCodec, QuantError
from ..quant.registry import get_kv_codec
from ..registry import BLOCK_CODECS, KV_CODECS
from .block import META_TENSORS, Block
from .codec import BlockCodec

_KINDS = {"k": "key", "v": "value"}


class QuantizedCodec(BlockCodec):
    """A ``streamvlm.quant`` KV codec (default options) applied per layer and per kind.

    One object per tier and stream: stateful codecs (``vidkv``) freeze their key channel
    tiers on the first block of each layer, and every later block of that layer is encoded
    and decoded with them (``shared_state`` / ``load_shared_state`` carry them over a restart).
    """

    def __init__(self, name: str) -> None:
        self.kv_codec = get_kv_codec(name)
        self.name = self.kv_codec.name  # the current name when ``name`` is an old alias
        self.stateful = type(self.kv_codec).shared_state is not KVCodec.shared_state
        self.state_version = 0
        self._stateful_layers: set[int] = set()

    def encode_layers(self, block: Block) -> dict[str, torch.Tensor]:
        """Each layer's fields, left where they were encoded (``encode`` moves the block at once).

        Off the CPU kernels' path (CUDA, or the reference chosen), the block's values are
        checked once for all layers, so encoding reads nothing back from the device per layer.
        """
        layers = [(i, k, v) for i, (k, v) in enumerate(block.layers) if k.shape[1] > 0]
        # (an empty layer is skipped: the quant codecs need a token; kv_shape alone rebuilds it)
        on_device = (
            bool(layers)
            and kernels.path_for(self.kv_codec, layers[0][1].shape[1], layers[0][1].device) != CPU
        )
        if on_device:
            for i, k, v in layers:  # the same errors, in the same order, as encoding layer by layer
                self.kv_codec.check_input(k, "key", i)
                self.kv_codec.check_input(v, "value", i)
            self.kv_codec.check_values([x for _, k, v in layers for x in (k, v)])
        tensors = {}
        for i, k, v in layers:
            for prefix, x in (("k", k), ("v", v)):
                enc = (
                    self.kv_codec.encode_on_device(x, _KINDS[prefix], i, values_checked=True)
                    if on_device
                    else kernels.encode(self.kv_codec, x, _KINDS[prefix], i)
                )
                tensors.update({f"{prefix}.{i}.{field}": t for field, t in enc.tensors.items()})
            self._note_state(i)
        return tensors

    def decode_layers(
        self,
        tensors,
        meta,
        device,
        dtype,
        out: Sequence[tuple[torch.Tensor, torch.Tensor] | None] | None = None,
    ):
        """The per-layer ``(keys, values)``; with ``out``, layer ``i`` is decoded into the
        preallocated ``out[i]`` pair (``[heads, tokens, head_dim]`` views of any strides, whose
        device and dtype win over ``device``/``dtype``; ``None`` for a layer allocates as usual)
        and those tensors are returned."""
        shape = tuple(int(s) for s in meta["kv_shape"])
        if out is not None and len(out) != meta["layers"]:
            raise QuantError(
                f"decode_layers out= has {len(out)} layers, the block {meta['layers']}; pass one per layer"
            )
        # the block's fields cross to the device in one copy, not one per tensor
        first_out = next((pair[0] for pair in out or () if pair is not None), None)
        fields = _by_layer(transfer.to_device(tensors, device if first_out is None else first_out.device))
        layers = []
        for i in range(meta["layers"]):
            targets = (None, None) if out is None or out[i] is None else out[i]
            if shape[1] == 0:
                layers.append(
                    tuple(torch.empty(shape, device=device, dtype=dtype) if o is None else o for o in targets)
                )
                continue
            layers.append(
                tuple(
                    self._decode(fields[p, i], p, i, shape, device, dtype, o)
                    for p, o in zip(("k", "v"), targets, strict=True)
                )
            )
        return layers

    def _decode(self, fields, prefix, layer, shape, device, dtype, out) -> torch.Tensor:
        enc = EncodedTensor(self.kv_codec.name, _KINDS[prefix], shape, fields, layer)
        return kernels.decode(enc, self.kv_codec, device, dtype, out=out)

    # per-layer state ------------------------------------------------------------------
    def _note_state(self, layer: int) -> None:
        """Bump ``state_version`` when ``layer`` has just acquired state (vidkv: its first block)."""
        if layer not in self._stateful_layers and self.kv_codec.shared_state(layer):
            self._stateful_layers.add(layer)
            self.state_version += 1

    def shared_state(self) -> dict[str, torch.Tensor]:
        """Every layer's state, named ``{layer}.{field}``."""
        return {
            f"{i}.{field}": t
            for i in sorted(self._stateful_layers)
            for field, t in self.kv_codec.shared_state(i).items()
        }

    def load_shared_state(self, tensors: dict[str, torch.Tensor]) -> None:
        per_layer: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
        for name, t in tensors.items():
            layer, field = name.split(".", 1)
            per_layer[int(layer)][field] = t
        for layer, state in per_layer.items():
            self.kv_codec.load_shared_state(layer, state)
            self._stateful_layers.add(layer)


def _by_layer(tensors: dict[str, torch.Tensor]) -> dict[tuple[str, int], dict[str, torch.Tensor]]:
    """``k.3.scale`` -> ``fields["k", 3]["scale"]``, in one pass over the block's tensors."""
    fields: dict[tuple[str, int], dict[str, torch.Tensor]] = defaultdict(dict)
    for name, t in tensors.items():
        if name in META_TENSORS:
            continue
        prefix, layer, field = name.split(".", 2)
        fields[prefix, int(layer)][field] = t
    return fields


for _name in KV_CODECS.names():
    BLOCK_CODECS.add(_name, partial(QuantizedCodec, _name), KV_CODECS.aliases(_name))
