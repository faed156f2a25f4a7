"""Registries that declare their names answer name checks without importing their modules,
and refuse a member whose name was not declared (the declaration is the one list)."""

import subprocess
import sys

import pytest

from streamvlm.errors import ConfigError
from streamvlm.registry import BLOCK_CODECS, KV_CODECS, SELECTION_MODES, Registry


def test_declared_names_are_checked_without_importing_their_modules():
    registry = Registry("toy codec", "no.such.module", declared=("a", "b"), declared_aliases={"old-a": "a"})
    assert registry.names() == ("a", "b")
    assert registry.check("codec", "old-a") == "a"
    assert registry.canonical("b") == "b"
    assert "old-a" in registry and "c" not in registry
    assert registry.aliases("a") == ("old-a",)
    with pytest.raises(ConfigError, match="codec must be one of a, b; got 'c'"):
        registry.check("codec", "c")
    with pytest.raises(ModuleNotFoundError):  # only a member itself needs its module
        registry.get("a")


def test_a_member_must_be_declared_as_it_registers():
    registry = Registry("toy codec", declared=("a",), declared_aliases={"old-a": "a"})
    with pytest.raises(ValueError, match="not declared"):
        registry.add("b", object())
    with pytest.raises(ValueError, match="not declared"):
        registry.add("a", object())  # without its declared alias
    member = registry.add("a", object(), ("old-a",))
    assert registry.get("old-a") is member


def test_a_declared_name_nobody_registers_is_found_on_first_lookup():
    registry = Registry("toy codec", "streamvlm.errors", declared=("a",))
    with pytest.raises(ValueError, match=r"\['a'\] declared .* but never registered"):
        registry.get("a")


def test_the_declared_codec_and_selection_names_are_the_registered_ones():
    """Looking a member up imports the modules, which register exactly the declared names."""
    for registry in (KV_CODECS, BLOCK_CODECS, SELECTION_MODES):
        for name in registry.names():
            assert registry.get(name) is registry._members[name]
        assert tuple(registry._members) == registry.names()
    assert BLOCK_CODECS.canonical("vidkv-ref") == "vidkv-paper"


def test_memory_config_checks_codec_and_selection_names_without_torch():
    code = (
        "import sys\n"
        "from streamvlm.config import MemoryConfig\n"
        "from streamvlm.errors import ConfigError\n"
        "assert MemoryConfig(host_codec='vidkv-ref', selection='per_layer').host_codec == 'vidkv-paper'\n"
        "try:\n    MemoryConfig(disk_codec='nope')\nexcept ConfigError as e:\n    print(e)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "disk_codec must be one of identity, fp16, bf16, int8, int4, kivi2, vidkv-paper, vidkv; got 'nope'",
        "False",
    ]
