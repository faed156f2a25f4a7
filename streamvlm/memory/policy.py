"""Which block leaves a full tier. Policies decide; tiers only store and move.

A policy sees each candidate's id, size and last use and returns victims in eviction
order; ``TieredStore`` asks the same policy for every tier (device, host, disk, any new
one) and moves or drops the victims. Block ids grow with stream time, so "oldest" is
"smallest id". A new policy is a subclass with a name, nothing else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from ..registry import EVICTION_POLICIES, Registered


@dataclass(frozen=True)
class Candidate:
    """A block a tier could give up."""

    id: int
    nbytes: int
    last_used: int  # a logical clock: larger is more recent (written or retrieved)


class EvictionPolicy(Registered, ABC):
    """Orders a tier's blocks for eviction. Subclasses register by name:
    ``class MyPolicy(EvictionPolicy, name="mine")`` makes ``eviction="mine"`` valid."""

    registry = EVICTION_POLICIES
    #: whether ``victims`` takes a lazy iterator of candidates in tier order. A tier lists
    #: blocks in the order they entered it, which is stream age under the age policy: the
    #: first tier and a persistent (disk) tier get new blocks only, and every other tier
    #: gets them from the one above, oldest first.
    lazy = False

    @abstractmethod
    def order(self, candidates: Sequence[Candidate]) -> list[int]:
        """Candidate ids, first to leave first."""

    def victims(self, candidates: Sequence[Candidate], bytes_to_free: int) -> list[int]:
        """The shortest prefix of ``order`` that frees at least ``bytes_to_free``."""
        size = {c.id: c.nbytes for c in candidates}
        chosen, freed = [], 0
        for block_id in self.order(candidates):
            if freed >= bytes_to_free:
                break
            chosen.append(block_id)
            freed += size[block_id]
        return chosen


class OldestFirst(EvictionPolicy, name="age"):
    """Stream age: the block seen longest ago leaves first (the default)."""

    #: tiers list blocks oldest first, so this policy needs only the first few candidates
    lazy = True

    def order(self, candidates):
        return sorted(c.id for c in candidates)

    def victims(self, candidates, bytes_to_free):
        """Candidates arrive oldest first: take from the front, without listing them all."""
        chosen, freed = [], 0
        for c in candidates:
            if freed >= bytes_to_free:
                break
            chosen.append(c.id)
            freed += c.nbytes
        return chosen


class LeastRecentlyUsed(EvictionPolicy, name="lru"):
    """The block written or retrieved longest ago leaves first; ties go to the older block."""

    def order(self, candidates):
        return [c.id for c in sorted(candidates, key=lambda c: (c.last_used, c.id))]


def get_policy(name: str) -> EvictionPolicy:
    """A new policy object by its registered name (``MemoryConfig.eviction``)."""
    return EVICTION_POLICIES.get(name)()


# the names config and the CLI list (kept for callers that imported it)
POLICIES: tuple[str, ...] = EVICTION_POLICIES.names()
