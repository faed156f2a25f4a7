"""The fixed real transform of ``quant/spectral.py`` (what ``vidkv``'s sign tier stores) and its
numba copy (``kernels/spectral_cpu.py``): close to ``torch.fft``, the same floats under any
thread count, and the kernel's floats the reference's to the bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamvlm.quant.spectral import from_rfft_components, is_butterfly, rfft_components, spectral_tables

LENGTHS = [1, 2, 3, 4, 6, 8, 16, 64, 65, 128]


def _signal(m: int, tokens: int = 37) -> torch.Tensor:
    g = torch.Generator().manual_seed(m)
    x = torch.randn(3, tokens, m, generator=g) * torch.logspace(-3, 3, m)
    x[0, 0] = 0.0
    x[0, 1] = -0.0
    return x


def _torch_components(x: torch.Tensor) -> torch.Tensor:
    m = x.shape[-1]
    spec = torch.fft.rfft(x.double(), dim=-1)
    k = m // 2 + 1
    return torch.cat([spec.real, spec.imag[..., 1 : (k - 1 if m % 2 == 0 else k)]], dim=-1)


@pytest.mark.parametrize("m", LENGTHS)
def test_components_are_the_rfft_and_invert(m: int) -> None:
    x = _signal(m)
    exact = _torch_components(x)
    scale = exact.abs().max()
    assert ((rfft_components(x).double() - exact).abs().max() / scale) < 5e-7
    back = from_rfft_components(exact.float(), m).double()
    assert ((back - x.double()).abs().max() / x.abs().max()) < 5e-7


def test_the_kinds_of_length() -> None:
    assert [m for m in LENGTHS if is_butterfly(m)] == [2, 4, 8, 16, 64, 128]


@pytest.mark.parametrize("m", [64, 65])
def test_the_same_floats_on_one_thread_and_two(m: int) -> None:
    x = _signal(m, tokens=4096)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = rfft_components(x), from_rfft_components(x, m)
        torch.set_num_threads(2)
        two = rfft_components(x), from_rfft_components(x, m)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


@pytest.mark.parametrize("m", LENGTHS)
def test_the_kernel_gives_the_reference_floats(m: int) -> None:
    pytest.importorskip("numba")
    from streamvlm.kernels.spectral_cpu import LANES, forward_lanes, inverse_lanes, scratch

    x = _signal(m, tokens=LANES + 37)  # a full block and a partial one
    heads, tokens, _ = x.shape
    got_forward, got_inverse = torch.empty_like(x), torch.empty_like(x)
    comps, work_re, work_im = scratch(m)
    for h in range(heads):
        for t0 in range(0, tokens, LANES):
            n = min(LANES, tokens - t0)
            block = x[h, t0 : t0 + n].numpy().T
            rows = np.arange(m)[::-1] + 3  # channel j in row rows[j] of a larger block
            spread = np.full((m + 3, LANES), np.nan, np.float32)
            spread[rows, :n] = block
            forward_lanes(spread, rows, n, spectral_tables(m), work_re, work_im, comps)
            got_forward[h, t0 : t0 + n] = torch.from_numpy(np.ascontiguousarray(comps[:, :n].T))
            comps[:, :n] = block
            chan = np.full((m + 3, LANES), np.nan, np.float32)
            cols = np.arange(m)[::-1] + 3  # each channel into its own row of the block
            inverse_lanes(comps, n, spectral_tables(m), work_re, work_im, chan, cols)
            got_inverse[h, t0 : t0 + n] = torch.from_numpy(chan[3:, :n][::-1].T.copy())
    assert torch.equal(got_forward.view(torch.int32), rfft_components(x).view(torch.int32))
    assert torch.equal(got_inverse.view(torch.int32), from_rfft_components(x, m).view(torch.int32))
