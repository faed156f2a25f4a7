"""Kernel dispatch: which path runs, the environment override, and life without triton or numba.

Nothing here runs a Triton kernel (test_kernels_triton.py does), so it passes with or
without triton installed; the CPU kernels' exactness is test_kernels_cpu.py's.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from streamvlm import kernels
from streamvlm.errors import ConfigError
from streamvlm.kernels import backend
from streamvlm.quant import get_kv_codec
from streamvlm.quant.synthetic import synthetic_kv

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def triton_is(monkeypatch):
    """``triton_is(False)``: make ``triton_available()`` answer as if triton were (not) installed."""

    def _set(available: bool) -> None:
        monkeypatch.setattr(backend, "triton_available", lambda: available)

    return _set


@pytest.mark.parametrize(
    ("env", "expected"),
    [(None, "auto"), ("", "auto"), ("reference", "reference"), (" Triton ", "triton"), (" CPU", "cpu")],
)
def test_backend_comes_from_the_environment(monkeypatch, env: str | None, expected: str) -> None:
    if env is None:
        monkeypatch.delenv(backend.BACKEND_ENV, raising=False)
    else:
        monkeypatch.setenv(backend.BACKEND_ENV, env)
    assert backend.requested_backend() == expected


def test_argument_overrides_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(backend.BACKEND_ENV, "triton")
    assert backend.requested_backend("reference") == "reference"
    assert not backend.use_triton("cuda", backend="reference")


def test_unknown_backend_is_a_config_error(monkeypatch) -> None:
    monkeypatch.setenv(backend.BACKEND_ENV, "cuda")
    with pytest.raises(ConfigError, match="STREAMVLM_KERNELS='cuda' is not a kernel backend"):
        backend.requested_backend()
    with pytest.raises(ConfigError, match="backend='fast'"):
        backend.use_triton("cpu", backend="fast")


@pytest.mark.parametrize(
    ("device", "available", "expected"),
    [
        ("cuda", True, True),
        ("cuda:1", True, True),
        ("cuda", False, False),
        ("cpu", True, False),
        ("meta", True, False),
    ],
)
def test_auto_picks_triton_only_for_cuda_with_triton(triton_is, device, available, expected) -> None:
    triton_is(available)
    assert backend.use_triton(device, backend="auto") is expected


def test_forced_triton_without_triton_is_a_config_error(triton_is) -> None:
    triton_is(False)
    with pytest.raises(ConfigError, match="triton does not import"):
        backend.use_triton("cpu", backend="triton")


def test_compiled_kernels_refuse_cpu_tensors() -> None:
    class JITFunction:  # what a kernel is when TRITON_INTERPRET was not set
        pass

    class InterpretedFunction:
        pass

    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        backend.check_runnable(JITFunction(), torch.device("cpu"))
    backend.check_runnable(InterpretedFunction(), torch.device("cpu"))
    backend.check_runnable(JITFunction(), torch.device("cuda"))


def test_cpu_launches_need_no_device_switch() -> None:
    assert backend.launch_device("cpu") == torch.device("cpu")
    with backend.on_device(torch.device("cpu")):
        pass


@pytest.mark.parametrize("name", ["kivi2", "vidkv", "int8", "vidkv-paper", "fp16"])
def test_cpu_encode_and_decode_are_the_reference(monkeypatch, name: str) -> None:
    # whatever runs on this machine (numba kernels where numba imports, else the reference)
    monkeypatch.delenv(backend.BACKEND_ENV, raising=False)
    _, k, v = synthetic_kv(2, 40, 32, seed=0)
    codec, reference = get_kv_codec(name), get_kv_codec(name)
    for kind, x in (("key", k), ("value", v)):
        enc = reference.encode(x, kind, layer=2)
        fast = kernels.encode(codec, x, kind, layer=2)
        assert all(torch.equal(fast.tensors[n], t) for n, t in enc.tensors.items())
        assert torch.equal(kernels.decode(enc, codec), reference.decode(enc))
        assert torch.equal(kernels.decode(enc, codec, backend="reference"), reference.decode(enc))


def test_codecs_without_a_kernel_ignore_a_forced_backend(triton_is) -> None:
    triton_is(False)  # would raise if the dispatch even asked
    enc = get_kv_codec("int8").encode(torch.randn(1, 4, 8), "value")
    assert torch.equal(kernels.decode(enc, backend="triton"), get_kv_codec("int8").decode(enc))
    assert kernels.has_kernel(get_kv_codec("kivi2", bits=4)) and kernels.has_kernel(get_kv_codec("vidkv"))
    assert not kernels.has_kernel(get_kv_codec("vidkv-paper"))


def test_cpu_packing_is_the_reference(monkeypatch) -> None:
    monkeypatch.delenv(backend.BACKEND_ENV, raising=False)
    codes = torch.randint(0, 3, (2, 21), dtype=torch.uint8)
    packed = kernels.pack_trits(codes)
    assert torch.equal(kernels.unpack_trits(packed, 21), codes)
    packed = kernels.pack_bits(codes, 2)
    assert torch.equal(kernels.unpack_bits(packed, 2, 21), codes)


def test_works_without_triton_and_never_imports_it_unasked() -> None:
    # a fresh interpreter: importing streamvlm.kernels and decoding on the CPU must not
    # import triton; with triton made unimportable (as on macOS) it all still works
    script = textwrap.dedent(
        """
        import sys
        import torch
        import streamvlm.kernels as k
        from streamvlm.quant import get_kv_codec
        assert "numba" not in sys.modules, "importing streamvlm.kernels imported numba"
        codec = get_kv_codec("kivi2")
        enc = codec.encode(torch.randn(2, 8, 16), "key")
        assert torch.equal(k.decode(enc, codec), codec.decode(enc))
        assert "triton" not in sys.modules, "importing or CPU decoding imported triton"
        sys.modules["triton"] = None  # import triton now raises ImportError
        sys.modules["numba"] = None  # and so does import numba
        k.triton_available.cache_clear()
        k.cpu_kernels_available.cache_clear()
        assert not k.cpu_kernels_available() and k.choose("cpu") == "reference"
        assert not k.triton_available() and not k.use_triton("cuda")
        assert torch.equal(k.decode(enc, codec, "cpu"), codec.decode(enc))
        try:
            k.pack_bits(torch.zeros(3, dtype=torch.uint8), 2, backend="triton")
        except k.backend.ConfigError as e:
            print("ok:", e)
        """
    )
    env = {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PATH": ""}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok: kernel backend 'triton' was requested but triton does not import")
