"""What a block costs in host reads and host<->device moves, counted on a CPU (issue 20 item 5).

Each block's encode and decode run the path a CUDA device takes (encode in torch on the
block's device, decode by the Triton kernels, interpreted here), under ``TransferCounter``.
The targets: a small constant per block whatever its layer and tensor counts. On a CPU no
copy changes device, so the moves are also counted where they are made:
``streamvlm.transfer.transfers`` counts the buffers a block crosses in.
"""

from __future__ import annotations

import pytest
import torch
from _blocks import random_block
from _counting import TransferCounter

from streamvlm import transfer
from streamvlm.memory.block import META_TENSORS, Block
from streamvlm.memory.codec import get_block_codec
from streamvlm.memory.tiers import HostTier
from streamvlm.quant.base import QuantError

HEADS, TOKENS, DIM = 2, 32, 16
# vidkv's layouts: standard from group_size (32) tokens, compact below (pruned blocks)
BLOCK_TOKENS = (TOKENS, 12)
CPU = torch.device("cpu")
# fields per layer and kind: kivi2 stores 3 (codes, scale, min), vidkv 4 to 9
CODECS = ("kivi2", "vidkv")
LAYER_COUNTS = (2, 4)


@pytest.fixture(autouse=True)
def device_path(monkeypatch):
    """The kernels a CUDA device runs: no numba CPU kernels (they read every tensor as numpy)."""
    monkeypatch.setenv("STREAMVLM_KERNELS", "triton")


def tier_with_one_block(codec: str, layers: int, tokens: int = TOKENS) -> HostTier:
    """A host tier that has stored and decoded block 0 (vidkv's per-layer state and caches set up)."""
    tier = HostTier(None, get_block_codec(codec))
    tier.put(random_block(0, tokens, layers, HEADS, DIM))
    tier.get(0, CPU, torch.float32)
    return tier


@pytest.mark.parametrize("tokens", BLOCK_TOKENS)
@pytest.mark.parametrize("layers", LAYER_COUNTS)
@pytest.mark.parametrize("codec", CODECS)
def test_encoding_a_block_reads_once_and_moves_one_buffer(codec, layers, tokens):
    tier = tier_with_one_block(codec, layers, tokens)
    block = random_block(1, tokens, layers, HEADS, DIM)
    before = transfer.transfers
    with TransferCounter() as counts:
        tier.put(block)
    # one read: the whole block's |x| peak, checked once (was 2 per layer and kind, plus 2
    # per packed field: kivi2 16 at 2 layers, 32 at 4)
    assert counts.host_reads == 1, counts.ops  # vidkv's tier channels are cached per layer and device
    assert counts.device_copies == 0, counts.ops
    assert counts.host_tensors == 0, counts.ops
    # one buffer for the block (was a .to("cpu") and a pin per field)
    assert transfer.transfers - before == 1


@pytest.mark.parametrize("tokens", BLOCK_TOKENS)
@pytest.mark.parametrize("layers", LAYER_COUNTS)
@pytest.mark.parametrize("codec", CODECS)
def test_decoding_a_block_reads_nothing_back(codec, layers, tokens):
    tier = tier_with_one_block(codec, layers, tokens)
    tier.put(random_block(1, tokens, layers, HEADS, DIM))
    with TransferCounter() as counts:
        block = tier.get(1, CPU, torch.float32)
    # vidkv's key channel map is cached per layer on the device (was rebuilt from the
    # codec's state per layer: 4 reads, 2 host-made tensors, 2 downloads a layer)
    assert (counts.host_reads, counts.device_copies, counts.host_tensors) == (0, 0, 0), counts.ops
    assert len(block.layers) == layers


def test_the_block_check_still_rejects_what_a_codec_cannot_store():
    tier = tier_with_one_block("kivi2", 2)
    bad = random_block(1, TOKENS, 2, HEADS, DIM)
    bad.layers[1][1][0, 3, 5] = float("inf")
    with pytest.raises(QuantError, match="inf or nan"):
        tier.put(bad)
    bad.layers[1][1][0, 3, 5] = 1e6
    with pytest.raises(QuantError, match="reaches 1e"):
        tier.put(bad)
    assert 1 not in tier


def test_pack_and_unpack_give_back_every_tensor_as_views_of_one_buffer():
    g = torch.Generator().manual_seed(0)
    tensors = {
        "codes": torch.randint(0, 256, (3, 7), dtype=torch.uint8, generator=g),
        "scale": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "zero": torch.randint(-128, 128, (2, 3), dtype=torch.int8, generator=g),
        "mask": torch.rand(9, generator=g) > 0.5,
        "positions": torch.arange(12, dtype=torch.int64).view(3, 4).t(),  # not contiguous
        "anchor": torch.tensor(2.5, dtype=torch.float16),  # 0-dim
        "empty": torch.empty(0, 4),
    }
    buffer, layout = transfer.pack_tensors(tensors)
    assert buffer.dtype == torch.uint8 and buffer.dim() == 1
    assert all(slot.offset % transfer.ALIGN == 0 for slot in layout)
    back = transfer.unpack_tensors(buffer, layout)
    assert list(back) == list(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape
        assert torch.equal(back[name], t), name
    storages = {t.untyped_storage().data_ptr() for t in back.values() if t.numel()}
    assert storages == {buffer.untyped_storage().data_ptr()}


def test_to_host_and_to_device_move_one_buffer_per_device():
    tensors = {"a": torch.arange(6).view(2, 3).t(), "b": torch.ones(3, dtype=torch.bfloat16)}
    before = transfer.transfers
    host = transfer.to_host(tensors)
    assert transfer.transfers - before == 1
    assert all(t.is_contiguous() for t in host.values())
    assert all(torch.equal(host[name], t) for name, t in tensors.items())
    # nothing to move onto the device the tensors are on
    assert transfer.to_device(host, CPU).keys() == host.keys()
    assert transfer.transfers - before == 1


def test_the_debug_flag_checks_every_packed_range_again(monkeypatch):
    tier = tier_with_one_block("kivi2", 2)
    block = random_block(1, TOKENS, 2, HEADS, DIM)
    monkeypatch.setenv("STREAMVLM_CHECK_CODES", "1")
    with TransferCounter() as counts:
        tier.put(block)
    # the block check, plus min and max of each of the 4 packed code arrays
    assert counts.host_reads == 1 + 2 * 4, counts.ops


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("tokens", BLOCK_TOKENS)
@pytest.mark.parametrize("codec", CODECS)
def test_on_cuda_a_block_crosses_once_each_way_into_one_pinned_buffer(codec, tokens):
    layers = 2
    tier = HostTier(None, get_block_codec(codec))
    cuda = torch.device("cuda")

    def on_cuda(block_id):
        block = random_block(block_id, tokens, layers, HEADS, DIM)
        return Block(meta=block.meta, layers=tuple((k.to(cuda), v.to(cuda)) for k, v in block.layers))

    tier.put(on_cuda(0))
    tier.get(0, cuda, torch.bfloat16)
    block = on_cuda(1)
    with TransferCounter() as put:
        tier.put(block)
    stored = tier._items[1]
    kv = [t for name, t in stored.tensors.items() if name not in META_TENSORS]
    assert all(t.is_pinned() and t.device.type == "cpu" for t in kv)
    assert len({t.untyped_storage().data_ptr() for t in kv}) == 1
    with TransferCounter() as get:
        back = tier.get(1, cuda, torch.bfloat16)
    assert back.layers[0][0].device.type == "cuda"
    # vidkv's key tier channels went to the device with the first block (cached per layer and device)
    assert (put.host_reads, put.device_copies) == (1, 1), put.ops
    assert (get.host_reads, get.device_copies) == (0, 1), get.ops


def test_constant_tables_are_uploaded_once_per_device():
    """The codecs' lookup tables (log8 scales, compact gains) stay on each device they were
    used on: indexing them on a GPU must not upload them per field and layer. ("meta" stands
    in for a GPU: a copy there is a change of device, like one to CUDA.)"""
    from streamvlm.quant import scales
    from streamvlm.quant import vidkv_compact as compact
    from streamvlm.quant.constants import DeviceConstant

    meta = torch.device("meta")
    table = DeviceConstant(torch.arange(4.0))
    assert table.on("cpu") is table.cpu
    assert table.on(meta) is table.on("meta") and table.on(meta).device == meta
    for constant in (scales._TABLE, compact.GAIN_TABLE, *compact.GAIN_BOUNDS.values()):
        constant.on(meta)
        with TransferCounter() as counts:
            again = constant.on(meta)
        assert again.device == meta and counts.device_copies == 0, counts.ops
    assert scales.code_bounds(True, meta) is scales.code_bounds(True, "meta")
