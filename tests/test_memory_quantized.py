"""Quantized host and disk tiers: a tier adds no error to its codec's, bits are reported, vidkv resumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _blocks import random_block

from streamvlm import MemoryConfig, StreamVLM
from streamvlm.errors import ConfigError
from streamvlm.memory.block import Block
from streamvlm.memory.checkpoint import CODEC_STATE_FILE, SessionResumeError
from streamvlm.memory.codec import IdentityCodec, get_block_codec
from streamvlm.memory.disk import DiskLog
from streamvlm.memory.disk_tier import DiskTier
from streamvlm.memory.policy import get_policy
from streamvlm.memory.tiered import TieredStore
from streamvlm.memory.tiers import DeviceTier, HostTier
from streamvlm.quant import get_kv_codec
from streamvlm.registry import BLOCK_CODECS
from streamvlm.runtime.session import Session

MODEL = "tiny-qwen2.5-vl"
LAYERS, HEADS, TOKENS, DIM = 2, 2, 16, 16  # the tiny model's KV shape for a 112x112 chunk
CODEC_NAMES = BLOCK_CODECS.names()
QUANT_NAMES = [n for n in CODEC_NAMES if n != "identity"]


def make_block(block_id: int, tokens: int = TOKENS) -> Block:
    return random_block(block_id, tokens, LAYERS, HEADS, DIM, position_step=100)


def codec_alone(name: str, blocks: list[Block]) -> tuple[list[list[tuple]], float]:
    """Each block's layers as the quant codec alone decodes them (one codec object, blocks in
    order, as a tier sees them), and the bits per K/V element it stores."""
    if name == "identity":
        return [list(b.layers) for b in blocks], 32.0
    codec = get_kv_codec(name)
    decoded, bits, elements = [], 0, 0
    for block in blocks:
        layers = []
        for i, (k, v) in enumerate(block.layers):
            ek, ev = codec.encode(k, "key", i), codec.encode(v, "value", i)
            layers.append((codec.decode(ek), codec.decode(ev)))
            bits += ek.stored_bits + ev.stored_bits
            elements += ek.numel + ev.numel
        decoded.append(layers)
    return decoded, bits / elements


def assert_same_kv(got: Block, expected_layers) -> None:
    for (k, v), (ek, ev) in zip(got.layers, expected_layers, strict=True):
        assert torch.equal(k, ek) and torch.equal(v, ev)


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_host_and_disk_tiers_add_no_error_to_the_codec(name, tmp_path):
    blocks = [make_block(i) for i in range(3)]
    disk = DiskTier(DiskLog(tmp_path / "d", flush_every=None, flush_seconds=None), get_block_codec(name))
    store = TieredStore(
        # device_bytes=0: every block goes down to host RAM at once
        [DeviceTier(0), HostTier(1 << 20, get_block_codec(name)), disk],
        get_policy("age"),
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    for block in blocks:
        store.put(block)
    expected, bits = codec_alone(name, blocks)
    assert [store.tier_of(b.id) for b in blocks] == ["host"] * 3
    for (block, _), layers in zip(store.get(b.id for b in blocks), expected, strict=True):
        assert_same_kv(block, layers)
        assert torch.equal(block.meta.summary, blocks[block.id].meta.summary)  # summaries untouched
    for block, layers in zip(blocks, expected, strict=True):  # the same blocks from the disk tier
        assert_same_kv(disk.get(block.id, "cpu", torch.float32), layers)
    per_tier = store.kv_bits_per_element()
    assert per_tier == {"device": None, "host": pytest.approx(bits), "disk": pytest.approx(bits)}
    # vidkv: per layer, 2 bits per key channel and head for the tiers (16 B over 2 layers) plus
    # the channel profiles of the compact layout (one byte per head and channel or component,
    # one bf16 per head) for keys and values
    state = 192 if name == "vidkv" else 0
    assert store.codec_state_bytes() == {"device": 0, "host": state, "disk": state}
    store.close()


@pytest.mark.parametrize("name", ["identity", "vidkv"])
def test_a_block_without_tokens_round_trips(name):
    block = make_block(0, tokens=0)
    codec = get_block_codec(name)
    stored = codec.encode(block)
    assert stored.meta["kv_shape"] == [HEADS, 0, DIM] and stored.kv_elements == 0
    back = codec.decode(stored, "cpu", torch.float32)
    assert [tuple(k.shape) for k, _ in back.layers] == [(HEADS, 0, DIM)] * LAYERS


def test_blocks_stored_as_vidkv_ref_decode_after_the_rename():
    """``vidkv-ref`` is the old name of ``vidkv-paper``: configuration reads it as the new
    name, and a block stored under the old name decodes as before."""
    assert MemoryConfig(host_codec="vidkv-ref", disk_codec="vidkv-ref").disk_codec == "vidkv-paper"
    block = make_block(0)
    stored = get_block_codec("vidkv-paper").encode(block)
    stored.meta["codec"] = "vidkv-ref"  # as written before the rename
    for reader in (get_block_codec("vidkv-ref"), get_block_codec("vidkv-paper")):
        assert reader.name == "vidkv-paper"
        assert_same_kv(reader.decode(stored, "cpu", torch.float32), codec_alone("vidkv-paper", [block])[0][0])


def test_unknown_codecs_are_one_line_config_errors():
    for make in (lambda: get_block_codec("vidkv3"), lambda: MemoryConfig(disk_codec="vidkv3")):
        with pytest.raises(ConfigError) as err:
            make()
        message = str(err.value)
        assert (
            "'vidkv3'" in message and "identity, fp16, bf16, int8, int4, kivi2, vidkv-paper, vidkv" in message
        )
        assert "\n" not in message
    assert MemoryConfig().host_codec == MemoryConfig().disk_codec == "vidkv"  # the default
    assert IdentityCodec().shared_state() == {}


# ----- sessions on the tiny model -------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> StreamVLM:
    return StreamVLM.from_pretrained(MODEL, device="cpu", dtype="float32")


def frames(n: int, start: int = 0) -> list[tuple[np.ndarray, float]]:
    # 112x112 pixels: one 2-frame chunk is a 16-token block on the tiny model
    return [
        (np.random.default_rng(i).integers(0, 256, size=(112, 112, 3), dtype=np.uint8), float(i))
        for i in range(start, start + n)
    ]


def test_session_tiers_store_with_their_codec_and_report_bits(engine, tmp_path):
    # window=0: no chunk attends to stored blocks, so every block's KV is the same whatever
    # the codec, and the identity session gives the full-precision reference
    def session(codec: str, name: str):
        memory = MemoryConfig(
            window=0, device_bytes=0, host_codec=codec, disk_codec=codec, disk_dir=str(tmp_path / name)
        )
        s = engine.new_session(memory=memory)
        s.add_frames(frames(4))
        return s

    exact, quantized = session("identity", "exact"), session("vidkv", "vidkv")
    ids = [m.id for m in exact.blocks.metas()]
    full = exact.blocks.load(ids)
    assert [m.tokens for m in exact.blocks.metas()] == [TOKENS, TOKENS]
    expected, bits = codec_alone("vidkv", full)
    for block, layers in zip(quantized.blocks.load(ids), expected, strict=True):  # from host RAM
        assert_same_kv(block, layers)
    disk = quantized.blocks.disk
    for block_id, layers in zip(ids, expected, strict=True):
        assert_same_kv(disk.get(block_id, "cpu", torch.float32), layers)
    # retrieval summaries come from the full-precision keys, whatever the codec
    for a, b in zip(exact.blocks.metas(), quantized.blocks.metas(), strict=True):
        assert torch.equal(a.summary, b.summary)
    stats = quantized.stats()
    assert bits == pytest.approx(1.9453125)  # vidkv's compact layout on [2, 16, 16] blocks
    assert stats.kv_bits_per_element == {
        "device": None,
        "host": pytest.approx(1.9453125),
        "disk": pytest.approx(1.9453125),
    }
    assert stats.codec_state_bytes == {"device": 0, "host": 192, "disk": 192}
    assert exact.stats().kv_bits_per_element == {"device": None, "host": 32.0, "disk": 32.0}
    quantized.ask("what is there?", max_new_tokens=1)
    exact.close(), quantized.close()


def test_resume_with_a_vidkv_disk_tier_decodes_blocks_bit_for_bit(engine, tmp_path):
    directory = tmp_path / "s"
    memory = MemoryConfig(
        window=2,
        device_bytes=0,
        host_bytes=0,
        disk_codec="vidkv",
        disk_dir=str(directory),
        disk_flush_blocks=99,
    )
    session = engine.new_session(memory=memory)
    session.add_frames(frames(2))
    # written before the first block reached the disk, not only at checkpoints
    state_file = directory / CODEC_STATE_FILE
    saved = state_file.read_bytes()
    session.add_frames(frames(4, start=2))
    ids = [m.id for m in session.blocks.metas()]
    before = session.blocks.load(ids)
    session.close()

    resumed = Session.resume(directory, StreamVLM.from_pretrained(MODEL, device="cpu", dtype="float32"))
    assert [resumed.blocks.tier_of(i) for i in ids] == ["disk"] * 3
    for old, new in zip(before, resumed.blocks.load(ids), strict=True):
        assert_same_kv(new, old.layers)
    resumed.add_frames(frames(2, start=6))  # keeps encoding with the same frozen channel tiers
    resumed.close()
    assert state_file.read_bytes() == saved

    state_file.unlink()  # without its state, a vidkv disk block cannot be decoded
    with pytest.raises(SessionResumeError, match=f"{CODEC_STATE_FILE} is missing"):
        Session.resume(directory, engine)
    state_file.write_bytes(saved)  # the failed resume released the directory: try again
    again = Session.resume(directory, engine)
    assert_same_kv(again.blocks.load(ids[:1])[0], before[0].layers)
    again.close()


def test_a_block_is_encoded_once_when_host_and_disk_share_a_codec(tmp_path, monkeypatch):
    """host_codec == disk_codec: the block written through to disk is that record, and the
    host tier takes it when the device demotes the block instead of encoding it again; the
    host copy lives in RAM (not the disk file's mapping) and holds a fresh encode's bytes."""
    from streamvlm.memory.codec import BlockCodec
    from streamvlm.memory.disk import DiskLog
    from streamvlm.memory.disk_tier import DiskTier
    from streamvlm.memory.policy import get_policy
    from streamvlm.memory.tiered import TieredStore
    from streamvlm.memory.tiers import DeviceTier, HostTier

    codec = get_block_codec("vidkv")
    encodes = []
    real_encode = BlockCodec.encode
    monkeypatch.setattr(
        BlockCodec, "encode", lambda self, block: encodes.append(block.id) or real_encode(self, block)
    )
    blocks = [random_block(i, 40, 2, 2, 32) for i in range(6)]
    device_bytes = 2 * sum(k.nbytes + v.nbytes for k, v in blocks[0].layers) + 1
    disk = DiskTier(DiskLog(tmp_path / "disk"), codec)
    store = TieredStore(
        [DeviceTier(device_bytes), HostTier(None, codec), disk],
        get_policy("lru"),
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    for block in blocks:
        store.put(block)
    host = store.tiers[1]
    assert sorted(host.held) == [0, 1, 2, 3] and encodes == [0, 1, 2, 3, 4, 5]  # once each
    fresh = get_block_codec("vidkv")
    for block_id in host.held:
        held = host._items[block_id]
        again = fresh.encode(blocks[block_id])
        assert all(torch.equal(held.tensors[n], t) for n, t in again.tensors.items())
        on_disk = disk.record(block_id).tensors  # views of the segment file's mapping
        assert all(held.tensors[n].data_ptr() != t.data_ptr() for n, t in on_disk.items() if t.numel())
    store.close()


def test_different_host_and_disk_codecs_still_encode_for_each(tmp_path):
    from streamvlm.config import MemoryConfig
    from streamvlm.memory.manager import _build_store

    class Backend:
        device, dtype = torch.device("cpu"), torch.float32

    store, disk = _build_store(
        MemoryConfig(host_codec="kivi2", disk_codec="vidkv", disk_dir=str(tmp_path)), Backend
    )
    assert store.tiers[1].codec is not disk.codec
    store.close()
    same, disk = _build_store(
        MemoryConfig(host_codec="vidkv", disk_codec="vidkv", disk_dir=str(tmp_path / "b")), Backend
    )
    assert same.tiers[1].codec is disk.codec
    same.close()
