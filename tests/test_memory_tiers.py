"""Tier mechanism and eviction policies: budgets are hard, blocks move intact, a new tier is a new class."""

from __future__ import annotations

import pytest
import torch
from _blocks import random_block

from streamvlm.errors import ConfigError
from streamvlm.memory.block import Block, BlockMeta, StoredBlock
from streamvlm.memory.codec import IdentityCodec, get_block_codec
from streamvlm.memory.disk import DiskLog
from streamvlm.memory.disk_tier import DiskTier
from streamvlm.memory.policy import Candidate, LeastRecentlyUsed, OldestFirst, get_policy
from streamvlm.memory.tiered import TieredStore
from streamvlm.memory.tiers import DeviceTier, HostTier, StagedPut, Tier

LAYERS, HEADS, DIM = 2, 2, 8


def make_block(block_id: int, tokens: int = 4) -> Block:
    return random_block(block_id, tokens, LAYERS, HEADS, DIM, position_step=10)


BLOCK_BYTES = make_block(0).nbytes  # 2 layers x (K + V) x 2 heads x 4 tokens x 8 dims x 4 bytes = 1024
# a host-tier entry holds the KV plus positions, kept mask and summary, and all of it counts
STORED_BYTES = IdentityCodec().encode(make_block(0)).nbytes


def store(device_blocks: int, host_blocks: int, policy="age", *below: Tier) -> TieredStore:
    tiers = [
        DeviceTier(device_blocks * BLOCK_BYTES),
        HostTier(host_blocks * STORED_BYTES, IdentityCodec()),
        *below,
    ]
    return TieredStore(tiers, get_policy(policy), device=torch.device("cpu"), dtype=torch.float32)


def assert_same_block(block: Block, expected: Block) -> None:
    for (k, v), (ek, ev) in zip(block.layers, expected.layers, strict=True):
        assert torch.equal(k, ek) and torch.equal(v, ev)
    assert torch.equal(block.meta.positions, expected.meta.positions)
    assert torch.equal(block.meta.summary, expected.meta.summary)


def test_policies_order_victims():
    cands = [Candidate(3, 10, last_used=1), Candidate(1, 10, last_used=5), Candidate(2, 10, last_used=2)]
    assert OldestFirst().order(cands) == [1, 2, 3]
    assert LeastRecentlyUsed().order(cands) == [3, 2, 1]
    in_tier_order = sorted(
        cands, key=lambda c: c.id
    )  # tiers list blocks in the order they entered: oldest first
    assert OldestFirst().victims(iter(in_tier_order), 15) == [1, 2]
    assert OldestFirst().victims(iter(in_tier_order), 0) == []
    assert LeastRecentlyUsed().victims(cands, 15) == [3, 2]
    with pytest.raises(ConfigError, match="unknown eviction policy"):
        get_policy("random")


def test_budgets_are_never_exceeded_and_blocks_move_down_intact():
    s = store(device_blocks=3, host_blocks=5)
    gone_all = []
    for i in range(40):
        gone_all += s.put(make_block(i))
        tiers = s.bytes_per_tier()
        assert tiers["device"] <= 3 * BLOCK_BYTES and tiers["host"] <= 5 * STORED_BYTES
    assert (BLOCK_BYTES, STORED_BYTES) == (1024, 1024 + 96 + 4 + 128)
    assert [m.id for m in s.metas()] == list(range(32, 40))  # 3 on device + 5 in host RAM
    assert gone_all == list(range(32)) and s.dropped_blocks == 32 and s.dropped_bytes == 32 * STORED_BYTES
    assert [s.tier_of(i) for i in (32, 36, 37, 39)] == ["host", "host", "device", "device"]
    loaded = s.get([33, 38])
    for block, _ in loaded:
        assert_same_block(block, make_block(block.id))
    assert [(block.id, tier) for block, tier in loaded] == [(33, "host"), (38, "device")]  # who served each
    with pytest.raises(KeyError):
        s.tier_of(5)


def test_lru_keeps_recently_retrieved_blocks_in_host_ram():
    s = store(device_blocks=1, host_blocks=3, policy="lru")
    for i in range(4):
        s.put(make_block(i))  # device: 3; host: 0, 1, 2
    s.get([0])  # block 0 retrieved: now the most recently used
    s.put(make_block(4))  # 3 moves to host; host must give one up: 1 (least recently used)
    assert sorted(m.id for m in s.metas()) == [0, 2, 3, 4]
    age = store(device_blocks=1, host_blocks=3, policy="age")
    for i in range(4):
        age.put(make_block(i))
    age.get([0])
    age.put(make_block(4))
    assert sorted(m.id for m in age.metas()) == [1, 2, 3, 4]


def test_a_zero_device_budget_sends_every_block_to_host():
    s = store(device_blocks=0, host_blocks=2)
    for i in range(3):
        s.put(make_block(i))
    assert s.bytes_per_tier()["device"] == 0 and [s.tier_of(i) for i in (1, 2)] == ["host", "host"]


def test_ids_must_grow():
    s = store(2, 2)
    s.put(make_block(5))
    with pytest.raises(ValueError, match="not newer"):
        s.put(make_block(5))


class RemoteTier(Tier):
    """A stand-in for a shared object store: encoded blocks in a dict, written to by nobody else."""

    def __init__(self, capacity: int):
        self.name, self.capacity = "remote", capacity
        self.codec = IdentityCodec()
        self.objects: dict[int, StoredBlock] = {}

    def stage(self, block: Block) -> StagedPut:
        stored = self.codec.encode(block)
        return StagedPut(block.id, stored.nbytes, lambda: self.objects.__setitem__(block.id, stored))

    def get(self, block_id: int, device, dtype) -> Block:
        return self.codec.decode(self.objects[block_id], device, dtype)

    def meta(self, block_id: int) -> BlockMeta:
        return self.codec.decode_meta(self.objects[block_id])

    def pop(self, block_id: int) -> None:
        del self.objects[block_id]

    def entries(self):
        return ((i, stored.nbytes) for i, stored in self.objects.items())

    @property
    def held(self):
        return self.objects.keys()

    @property
    def nbytes(self) -> int:
        return sum(stored.nbytes for stored in self.objects.values())

    @property
    def kv_bits(self) -> int:
        return sum(stored.kv_bits for stored in self.objects.values())

    @property
    def kv_elements(self) -> int:
        return sum(stored.kv_elements for stored in self.objects.values())


def test_a_new_tier_class_plugs_in_below_the_others():
    s = store(1, 2, "age", RemoteTier(3 * STORED_BYTES))
    gone_all = []
    for i in range(10):
        gone_all += s.put(make_block(i))
        tiers = s.bytes_per_tier()
        assert tiers["device"] <= BLOCK_BYTES and tiers["host"] <= 2 * STORED_BYTES
        assert tiers["remote"] <= 3 * STORED_BYTES
    assert gone_all == [0, 1, 2, 3] and s.dropped_blocks == 4
    assert [m.id for m in s.metas()] == list(range(4, 10))
    assert [s.tier_of(i) for i in range(4, 10)] == ["remote"] * 3 + ["host"] * 2 + ["device"]
    for block, tier in s.get([5, 8]):
        assert tier == {5: "remote", 8: "host"}[block.id]
        assert_same_block(block, make_block(block.id))
    assert s.kv_bits_per_element() == {"device": 32.0, "host": 32.0, "remote": 32.0}
    assert s.codec_state_bytes() == {"device": 0, "host": 0, "remote": 0}
    s.sync(), s.flush(), s.close()  # memory tiers have nothing to make durable


def test_disk_writes_through_and_host_ram_caches_it(tmp_path):
    disk = DiskTier(DiskLog(tmp_path / "s", flush_every=None, flush_seconds=None), IdentityCodec())
    s = store(1, 2, "age", disk)
    for i in range(6):
        assert s.put(make_block(i)) == []  # nothing leaves: the disk tier is unbounded
    assert disk.log.ids() == list(range(6))  # every block, from its creation
    assert [s.tier_of(i) for i in range(6)] == ["disk"] * 3 + ["host"] * 2 + ["device"]
    assert (len(s.tiers[1]), s.dropped_blocks) == (2, 0)  # host victims were only popped
    assert [tier for _, tier in s.get([0, 4])] == ["disk", "host"]
    s.close()
    resumed = store(1, 2, "age", DiskTier(DiskLog.open(tmp_path / "s"), IdentityCodec()))
    assert resumed.adopt() == [] and [m.id for m in resumed.metas()] == list(range(6))
    assert {resumed.tier_of(i) for i in range(6)} == {"disk"}
    assert_same_block(resumed.get([2])[0].block, make_block(2))
    resumed.close()


def test_a_rejected_block_leaves_no_trace(tmp_path):
    disk = DiskTier(DiskLog(tmp_path / "s", flush_every=None, flush_seconds=None), get_block_codec("fp16"))
    s = store(1, 1, "age", disk)
    s.put(make_block(0))
    huge = make_block(1)
    huge = Block(meta=huge.meta, layers=tuple((k * 1e6, v) for k, v in huge.layers))  # fp16 overflow
    with pytest.raises(ValueError):
        s.put(huge)
    assert [m.id for m in s.metas()] == [0] and disk.log.ids() == [0] and s.tier_of(0) == "device"
    s.close()


def test_a_stateful_disk_codec_hands_its_state_over_before_a_block_needs_it(tmp_path):
    handed = []
    log = DiskLog(tmp_path / "s", flush_every=None, flush_seconds=None)
    disk = DiskTier(
        log,
        get_block_codec("vidkv"),
        on_codec_state=lambda codec: handed.append((len(log), codec.state_version)),
    )
    s = store(1, 1, "age", disk)
    for i in range(3):
        s.put(make_block(i))
    # once, when the first block made state (one version per layer), before it reached the disk
    assert handed == [(0, LAYERS)]
    # 2 bits per key channel, head and layer for the tiers (8 B) plus vidkv's channel profiles
    assert s.codec_state_bytes()["disk"] == 104
    s.close()
    assert handed == [(0, LAYERS)]  # nothing changed since
