"""Tier mechanism and eviction policies: budgets are hard, blocks move intact."""

from __future__ import annotations

import pytest
import torch
from _blocks import random_block

from streamvlm.errors import ConfigError
from streamvlm.memory.block import Block
from streamvlm.memory.codec import IdentityCodec
from streamvlm.memory.policy import Candidate, LeastRecentlyUsed, OldestFirst, get_policy
from streamvlm.memory.tiered import TieredStore

LAYERS, HEADS, DIM = 2, 2, 8


def make_block(block_id: int, tokens: int = 4) -> Block:
    return random_block(block_id, tokens, LAYERS, HEADS, DIM, position_step=10)


BLOCK_BYTES = make_block(0).nbytes  # 2 layers x (K + V) x 2 heads x 4 tokens x 8 dims x 4 bytes = 1024
# a host-tier entry holds the KV plus positions, kept mask and summary, and all of it counts
STORED_BYTES = IdentityCodec().encode(make_block(0)).nbytes


def store(device_blocks: int, host_blocks: int, policy="age") -> TieredStore:
    return TieredStore(
        device_bytes=device_blocks * BLOCK_BYTES,
        host_bytes=host_blocks * STORED_BYTES,
        device=torch.device("cpu"),
        dtype=torch.float32,
        host_codec=IdentityCodec(),
        policy=get_policy(policy),
    )


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
    for block in s.get([33, 38]):
        expected = make_block(block.id)
        for (k, v), (ek, ev) in zip(block.layers, expected.layers, strict=True):
            assert torch.equal(k, ek) and torch.equal(v, ev)
        assert torch.equal(block.meta.positions, expected.meta.positions)
        assert torch.equal(block.meta.summary, expected.meta.summary)
    assert s.hits["answer"] == {"host": 1, "device": 1} and not s.hits["window"]
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
