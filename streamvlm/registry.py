"""Named implementations of one concept, registered where each class is defined.

Configuration names things by string (``eviction="lru"``, ``disk_codec="vidkv"``); each
concept has one ``Registry`` that maps those names to the classes implementing them. A
class joins its registry where it is defined, as transformers' ``cache_utils`` does
(``class LeastRecentlyUsed(EvictionPolicy, name="lru")``: the concept's base class is
``Registered``), so adding an implementation never means editing a list elsewhere.

This module is a leaf: it imports nothing of streamvlm but ``errors``. A registry knows
the modules that define its members by name and imports them on the first lookup, so
``config.py`` can validate names without importing torch or the memory and runtime
packages when it is itself imported. Where those modules import torch (codecs, selection
modes), the registry also declares its names here, so that checking a name (the command
line refusing ``--host-codec nope``) imports nothing; a class may only register a
declared name, and the first lookup of a member checks that every declared name has one.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import ConfigError

_LOADING = threading.RLock()  # one registry loads its modules at a time (``Registry._load``)

T = TypeVar("T")


class Registry(Generic[T]):
    """Names of one concept -> the class (or factory) implementing each.

    ``kind`` names the concept in error messages ("eviction policy"); ``modules`` are the
    dotted names of the modules that register members, imported on first lookup.
    Aliases are old names still accepted; ``names()`` lists current names only.

    ``declared`` (current names, in the order they are listed) and ``declared_aliases``
    (old name -> current name), when given, answer ``names``, ``aliases``, ``check``,
    ``canonical`` and ``in`` without importing ``modules``; only ``get`` imports them.
    """

    def __init__(
        self,
        kind: str,
        *modules: str,
        declared: tuple[str, ...] | None = None,
        declared_aliases: dict[str, str] | None = None,
    ):
        self.kind = kind
        self._modules = modules
        self._loaded = not modules
        self._members: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._declared = declared
        self._declared_aliases = dict(declared_aliases or {})

    def add(self, name: str, member: T, aliases: tuple[str, ...] = ()) -> T:
        """Register ``member`` under ``name`` (and old ``aliases``); returns it (usable as a decorator's body)."""
        if name in self._members or name in self._aliases:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if self._declared is not None:  # a mistake in a module of streamvlm: say where the list is
            declared_aliases = {a for a, current in self._declared_aliases.items() if current == name}
            if name not in self._declared or set(aliases) != declared_aliases:
                raise ValueError(
                    f"{self.kind} {name!r} (aliases {aliases}) is not declared so in streamvlm/registry.py; "
                    "add it to the registry's declared names there"
                )
        self._members[name] = member
        for alias in aliases:
            self._aliases[alias] = name
        return member

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator form of ``add``."""
        return lambda member: self.add(name, member, aliases)

    def _load(self) -> None:
        # Reentrant lock: a module being imported here may look members up (same thread),
        # while another thread (two sessions created at once) waits for the import to end
        # instead of seeing a registry marked loaded and still empty.
        with _LOADING:
            if self._loaded:
                return
            self._loaded = True  # first, so that a module registering members may look them up
            for module in self._modules:
                importlib.import_module(module)
            missing = [n for n in self._declared or () if n not in self._members]
            if missing:
                raise ValueError(
                    f"{self.kind} {missing} declared in streamvlm/registry.py but never registered"
                )

    def _names(self) -> tuple[tuple[str, ...], dict[str, str]]:
        """(current names, old name -> current name): declared ones, else the registered ones."""
        if self._declared is not None:
            return self._declared, self._declared_aliases
        self._load()
        return tuple(self._members), self._aliases

    def aliases(self, name: str) -> tuple[str, ...]:
        """The old names still accepted for the current name ``name``."""
        return tuple(alias for alias, current in self._names()[1].items() if current == name)

    def names(self) -> tuple[str, ...]:
        """Current names, in declaration (else registration) order, aliases excluded."""
        return self._names()[0]

    def canonical(self, name: str) -> str:
        """``name`` with an old alias replaced by the current name; ``ConfigError`` if unknown."""
        names, aliases = self._names()
        name = aliases.get(name, name)
        if name not in names:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {', '.join(names)}")
        return name

    def check(self, field: str, value: str) -> str:
        """Validate the option ``field`` = ``value``; returns the current name."""
        names, aliases = self._names()
        name = aliases.get(value, value)
        if name not in names:
            raise ConfigError(f"{field} must be one of {', '.join(names)}; got {value!r}")
        return name

    def get(self, name: str) -> T:
        """The member registered under ``name`` (or an alias of it)."""
        name = self.canonical(name)
        self._load()
        return self._members[name]

    def __contains__(self, name: object) -> bool:
        names, aliases = self._names()
        return name in names or name in aliases


# The codec names, declared because the codec modules import torch: the published methods
# first, then streamvlm's own vidkv; every KV codec is also a block codec of the same name.
_KV_CODEC_NAMES = ("fp16", "bf16", "int8", "int4", "kivi2", "vidkv-paper", "vidkv")
_KV_CODEC_ALIASES = {"vidkv-ref": "vidkv-paper"}  # VidKV as published, under its old name

# One registry per concept. Each names the modules whose classes register themselves.
KV_CODECS: Registry = Registry(
    "KV codec", "streamvlm.quant.registry", declared=_KV_CODEC_NAMES, declared_aliases=_KV_CODEC_ALIASES
)
"""Tensor codecs of ``streamvlm.quant`` (``KVCodec``): keys or values in, encoded tensors out."""
BLOCK_CODECS: Registry = Registry(
    "block codec",
    "streamvlm.memory.codec",
    "streamvlm.memory.quantized",
    declared=("identity", *_KV_CODEC_NAMES),
    declared_aliases=_KV_CODEC_ALIASES,
)
"""What a host or disk tier stores a block as (``BlockCodec``): ``MemoryConfig.host_codec`` / ``disk_codec``."""
EVICTION_POLICIES: Registry = Registry("eviction policy", "streamvlm.memory.policy")
"""Which block leaves a full tier first: ``MemoryConfig.eviction``."""
SELECTION_MODES: Registry = Registry(
    "selection mode", "streamvlm.retrieval.select", declared=("shared", "per_layer")
)
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
