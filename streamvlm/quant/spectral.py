"""Real frequency components of a vector along the last dimension.

VidKV quantizes the "normal" key channels to one sign bit per frequency component. The
published method uses the full complex FFT: ``m`` channels give ``m`` complex numbers,
i.e. ``2m`` real components, half of them redundant (a real signal's spectrum is
conjugate symmetric) and one or two always zero. ``rfft`` keeps exactly ``m`` real
degrees of freedom; sign-quantizing them with per-component scales reconstructs the same
vector as sign-quantizing the full FFT (``X[m-k] = conj(X[k])`` gives the same sign and
the same mean magnitude), at half the bits.

``rfft_components`` and ``from_rfft_components`` (what ``vidkv`` stores and decodes) are
computed on a CPU by a fixed sequence of float32 additions and multiplications, written out
below, instead of by ``torch.fft``: a library FFT's last bits change with its thread count
and build (torch's CPU FFT differs between 1 and 2 threads), so a block would decode to
other floats under another thread count, and a compiled kernel could not match it bit for
bit. Each step here is one IEEE operation on whole tensors, so the same floats come out
whatever the thread count, and ``kernels/spectral_cpu.py`` repeats the steps to the bit. For
``m`` a power of two (every real head_dim: 128 channels give 64 sign-tier channels) the steps
are a radix-2 FFT: the real transform of length ``m`` as a complex one of length ``m / 2``
(even samples the real parts, odd samples the imaginary parts), decimation in time; other
``m`` take a direct sum over the components in index order (``O(m**2)``).

On a GPU the same functions call ``torch.fft`` (cuFFT): there the steps would be some 80
kernel launches per block where cuFFT takes one, and no kernel has to match them. The two
agree to float32 rounding (about 1e-7 of the largest component), so a block encoded on one
device decodes on the other to within that.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch


def fft_components(x: torch.Tensor) -> torch.Tensor:
    """``[..., m]`` real -> ``[..., 2m]``: real parts then imaginary parts of ``fft(x)``."""
    spec = torch.fft.fft(x.float(), dim=-1)
    return torch.cat([spec.real, spec.imag], dim=-1)


def from_fft_components(c: torch.Tensor, m: int) -> torch.Tensor:
    """Inverse of ``fft_components`` (real part of the inverse FFT)."""
    spec = torch.complex(c[..., :m].contiguous(), c[..., m:].contiguous())
    return torch.fft.ifft(spec, n=m, dim=-1).real


# ----- the fixed transform ------------------------------------------------------------------


def is_butterfly(m: int) -> bool:
    """Whether length ``m`` takes the radix-2 steps (a power of two >= 2) or the direct sum."""
    return m >= 2 and m & (m - 1) == 0


class SpectralTables(NamedTuple):
    """Constants of the length-``m`` transform, float32 (numpy: shared with the CPU kernels).

    Butterfly (``m = 2 * half``): ``turn_cos/turn_sin[k] = cos/sin(2 pi k / m)``, ``k <= half``
    (the real-to-complex turn); ``stage_cos/stage_sin[span - 1 + j] = cos/sin(pi j / span)``
    for each stage's span 1, 2, 4, .. half / 2 and ``j < span``; ``order``: bit reversal of
    ``0 .. half - 1``. Direct sum: ``inverse[k, j]``, the channel ``j`` that component ``k``
    alone decodes to, and ``forward[j, k]``, the component ``k`` that channel ``j`` alone
    gives. The unused kind's arrays are empty.
    """

    turn_cos: np.ndarray
    turn_sin: np.ndarray
    stage_cos: np.ndarray
    stage_sin: np.ndarray
    order: np.ndarray
    inverse: np.ndarray
    forward: np.ndarray


@functools.cache
def spectral_tables(m: int) -> SpectralTables:
    """The constants of length ``m`` (computed in float64, rounded once to float32)."""
    empty = np.zeros(0, np.float32)
    if is_butterfly(m):
        half = m // 2
        k = np.arange(half + 1)
        spans = [1 << s for s in range(half.bit_length() - 1)]
        angles = np.concatenate([np.pi * np.arange(span) / span for span in spans] or [np.zeros(0)])
        bits = half.bit_length() - 1
        order = np.array([int(format(i, f"0{bits}b")[::-1], 2) if bits else 0 for i in range(half)])
        return SpectralTables(
            np.cos(2 * np.pi * k / m).astype(np.float32),
            np.sin(2 * np.pi * k / m).astype(np.float32),
            np.cos(angles).astype(np.float32),
            np.sin(angles).astype(np.float32),
            order.astype(np.int64),
            np.zeros((0, 0), np.float32),
            np.zeros((0, 0), np.float32),
        )
    # component k of m: real part of bin k for k < m // 2 + 1, then imaginary parts of bins 1 ..
    n_real = m // 2 + 1
    j = np.arange(m)
    inverse = np.empty((m, m))
    forward = np.empty((m, m))
    for comp in range(m):
        real = comp < n_real
        b = comp if real else comp - n_real + 1
        paired = 1 if b == 0 or 2 * b == m else 2  # bins with a conjugate twin count twice
        wave = np.cos(2 * np.pi * b * j / m) if real else -np.sin(2 * np.pi * b * j / m)
        inverse[comp] = paired * wave / m
        forward[:, comp] = wave
    return SpectralTables(
        empty,
        empty,
        empty,
        empty,
        np.zeros(0, np.int64),
        inverse.astype(np.float32),
        forward.astype(np.float32),
    )


def _torch_tables(m: int, device: torch.device) -> SpectralTables:
    return SpectralTables(*(torch.from_numpy(a).to(device) for a in spectral_tables(m)))


def _stages(
    re: torch.Tensor, im: torch.Tensor, t: SpectralTables, sign: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Radix-2 decimation in time over the last axis (inputs in bit-reversed order); twiddles
    ``exp(sign * i pi j / span)``."""
    half = re.shape[-1]
    lead = re.shape[:-1]
    span = 1
    while span < half:
        wr = t.stage_cos[span - 1 : 2 * span - 1]
        wi = t.stage_sin[span - 1 : 2 * span - 1] * sign  # exact: a sign flip
        shape = (*lead, half // (2 * span), 2, span)
        re, im = re.reshape(shape), im.reshape(shape)
        pr, pi, qr, qi = re[..., 0, :], im[..., 0, :], re[..., 1, :], im[..., 1, :]
        tr = wr * qr - wi * qi
        ti = wr * qi + wi * qr
        re = torch.stack([pr + tr, pr - tr], dim=-2).reshape(*lead, half)
        im = torch.stack([pi + ti, pi - ti], dim=-2).reshape(*lead, half)
        span *= 2
    return re, im


def _imag_slice(m: int) -> slice:
    # imag of the DC bin is always 0; so is the Nyquist bin's when m is even
    k = m // 2 + 1
    return slice(1, k - 1 if m % 2 == 0 else k)


def rfft_components(x: torch.Tensor) -> torch.Tensor:
    """``[..., m]`` real -> ``[..., m]`` real: the non-redundant, not-always-zero parts of ``rfft(x)``
    (real parts of bins ``0 .. m // 2``, then imaginary parts of bins ``1 ..``)."""
    x = x.float()
    m = x.shape[-1]
    if x.device.type != "cpu":
        spec = torch.fft.rfft(x, dim=-1)
        return torch.cat([spec.real, spec.imag[..., _imag_slice(m)]], dim=-1)
    t = _torch_tables(m, x.device)
    if not is_butterfly(m):
        return _direct(x, t.forward)
    half = m // 2
    re, im = _stages(x[..., 0::2][..., t.order], x[..., 1::2][..., t.order], t, -1.0)
    # bin k of the real signal from bins k and half - k of the complex one (k = 0 .. half)
    k = torch.arange(half + 1, device=x.device)
    ar, ai = re[..., k % half], im[..., k % half]
    br, bi = re[..., (half - k) % half], im[..., (half - k) % half]
    even_r, even_i = (ar + br) * 0.5, (ai - bi) * 0.5
    odd_r, odd_i = (ai + bi) * 0.5, (br - ar) * 0.5
    real = even_r + (t.turn_cos * odd_r + t.turn_sin * odd_i)
    imag = even_i + (t.turn_cos * odd_i - t.turn_sin * odd_r)
    return torch.cat([real, imag[..., 1:half]], dim=-1)


def from_rfft_components(c: torch.Tensor, m: int) -> torch.Tensor:
    """Inverse of ``rfft_components`` (``irfft``'s scaling: the components of ``x`` give ``x``)."""
    c = c.float()
    if c.device.type != "cpu":
        k = m // 2 + 1
        imag = torch.zeros_like(c[..., :k])
        imag[..., _imag_slice(m)] = c[..., k:]
        return torch.fft.irfft(torch.complex(c[..., :k].contiguous(), imag), n=m, dim=-1)
    t = _torch_tables(m, c.device)
    if not is_butterfly(m):
        return _direct(c, t.inverse)
    half = m // 2
    zero = torch.zeros_like(c[..., :1])
    real = c[..., : half + 1]  # bins 0 .. half
    imag = torch.cat([zero, c[..., half + 1 :], zero], dim=-1)  # bins 0 and half have none
    # complex bin k (k < half) of the half-length signal: even part + i * odd part
    ar, ai = real[..., :half], imag[..., :half]
    br, bi = real[..., 1:].flip(-1), imag[..., 1:].flip(-1)  # bin half - k
    even_r, even_i = ar + br, ai - bi
    diff_r, diff_i = ar - br, ai + bi
    cos, sin = t.turn_cos[:half], t.turn_sin[:half]
    odd_r = diff_r * cos - diff_i * sin
    odd_i = diff_r * sin + diff_i * cos
    re, im = _stages((even_r - odd_i)[..., t.order], (even_i + odd_r)[..., t.order], t, 1.0)
    return torch.stack([re, im], dim=-1).reshape(*c.shape[:-1], m) * (1.0 / m)


def _direct(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``x @ basis`` as a sum in index order, one rounding per step (a matmul sums in blocks)."""
    out = x[..., :1] * basis[0]
    for k in range(1, basis.shape[0]):
        out = out + x[..., k : k + 1] * basis[k]
    return out
