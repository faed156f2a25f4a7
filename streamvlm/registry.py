"""Named implementations of one concept, registered where each class is defined.

Configuration names things by string (``eviction="lru"``, ``disk_codec="vidkv"``); each
concept has one ``Registry`` that maps those names to the classes implementing them. A
class joins its registry where it is defined, as transformers' ``cache_utils`` does
(``class LeastRecentlyUsed(EvictionPolicy, name="lru")``: the concept's base class is
``Registered``), so adding an implementation never means editing a list elsewhere.

This module is a leaf: it imports nothing of streamvlm but ``errors``. A registry knows
the modules that define its members by name and imports them on the first lookup, so
``config.py`` can validate names without importing torch or the memory and runtime
packages when it is itself imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names of one concept -> the class (or factory) implementing each.

    ``kind`` names the concept in error messages ("eviction policy"); ``modules`` are the
    dotted names of the modules that register members, imported on first lookup.
    Aliases are old names still accepted; ``names()`` lists current names only.
    """

    def __init__(self, kind: str, *modules: str):
        self.kind = kind
        self._modules = modules
        self._loaded = not modules
        self._members: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def add(self, name: str, member: T, aliases: tuple[str, ...] = ()) -> T:
        """Register ``member`` under ``name`` (and old ``aliases``); returns it (usable as a decorator's body)."""
        if name in self._members or name in self._aliases:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._members[name] = member
        for alias in aliases:
            self._aliases[alias] = name
        return member

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator form of ``add``."""
        return lambda member: self.add(name, member, aliases)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # first, so that a module registering members may look them up
            for module in self._modules:
                importlib.import_module(module)

    def aliases(self, name: str) -> tuple[str, ...]:
        """The old names still accepted for the current name ``name``."""
        self._load()
        return tuple(alias for alias, current in self._aliases.items() if current == name)

    def names(self) -> tuple[str, ...]:
        """Current names, in registration order (aliases excluded)."""
        self._load()
        return tuple(self._members)

    def canonical(self, name: str) -> str:
        """``name`` with an old alias replaced by the current name; ``ConfigError`` if unknown."""
        self._load()
        name = self._aliases.get(name, name)
        if name not in self._members:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._members)}")
        return name

    def check(self, field: str, value: str) -> str:
        """Validate the option ``field`` = ``value``; returns the current name."""
        self._load()
        name = self._aliases.get(value, value)
        if name not in self._members:
            raise ConfigError(f"{field} must be one of {', '.join(self._members)}; got {value!r}")
        return name

    def get(self, name: str) -> T:
        """The member registered under ``name`` (or an alias of it)."""
        return self._members[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._members or name in self._aliases


# One registry per concept. Each names the modules whose classes register themselves.
KV_CODECS: Registry = Registry("KV codec", "streamvlm.quant.registry")
"""Tensor codecs of ``streamvlm.quant`` (``KVCodec``): keys or values in, encoded tensors out."""
BLOCK_CODECS: Registry = Registry("block codec", "streamvlm.memory.codec", "streamvlm.memory.quantized")
"""What a host or disk tier stores a block as (``BlockCodec``): ``MemoryConfig.host_codec`` / ``disk_codec``."""
EVICTION_POLICIES: Registry = Registry("eviction policy", "streamvlm.memory.policy")
"""Which block leaves a full tier first: ``MemoryConfig.eviction``."""
SELECTION_MODES: Registry = Registry("selection mode", "streamvlm.retrieval.select")
"""How retrieval picks blocks per layer: ``MemoryConfig.selection``."""
QUEUE_POLICIES: Registry = Registry("queue policy", "streamvlm.runtime.scheduling")
"""Which frame a full encoder queue drops: ``MemoryConfig.queue_policy``."""
BACKENDS: Registry = Registry(
    "model family", "streamvlm.models.qwen2_5_vl", "streamvlm.models.llava_onevision"
)
"""Model families (``Backend`` subclasses) by their transformers ``model_type``."""


class Registered:
    """Base for a concept whose subclasses join its registry by naming themselves.

    The concept's base class sets ``registry``; a subclass passes ``name`` (and old
    ``aliases``) in its class statement, ``class LeastRecentlyUsed(EvictionPolicy,
    name="lru")``, and is registered there. Intermediate bases pass no name.
    """

    registry: Registry
    name: str
    aliases: tuple[str, ...] = ()

    def __init_subclass__(cls, name: str | None = None, aliases: tuple[str, ...] = (), **kwargs):
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name, cls.aliases = name, aliases
            cls.registry.add(name, cls, aliases)
