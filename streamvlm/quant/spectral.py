"""Real frequency components of a vector along the last dimension.

VidKV quantizes the "normal" key channels to one sign bit per frequency component. The
published method uses the full complex FFT: ``m`` channels give ``m`` complex numbers,
i.e. ``2m`` real components, half of them redundant (a real signal's spectrum is
conjugate symmetric) and one or two always zero. ``rfft`` keeps exactly ``m`` real
degrees of freedom; sign-quantizing them with per-component scales reconstructs the same
vector as sign-quantizing the full FFT (``X[m-k] = conj(X[k])`` gives the same sign and
the same mean magnitude), at half the bits.
"""

from __future__ import annotations

import torch


def fft_components(x: torch.Tensor) -> torch.Tensor:
    """``[..., m]`` real -> ``[..., 2m]``: real parts then imaginary parts of ``fft(x)``."""
    spec = torch.fft.fft(x.float(), dim=-1)
    return torch.cat([spec.real, spec.imag], dim=-1)


def from_fft_components(c: torch.Tensor, m: int) -> torch.Tensor:
    """Inverse of ``fft_components`` (real part of the inverse FFT)."""
    spec = torch.complex(c[..., :m].contiguous(), c[..., m:].contiguous())
    return torch.fft.ifft(spec, n=m, dim=-1).real


def _imag_slice(m: int) -> slice:
    # imag of the DC bin is always 0; so is the Nyquist bin's when m is even
    k = m // 2 + 1
    return slice(1, k - 1 if m % 2 == 0 else k)


def rfft_components(x: torch.Tensor) -> torch.Tensor:
    """``[..., m]`` real -> ``[..., m]`` real: the non-redundant, not-always-zero parts of ``rfft(x)``."""
    m = x.shape[-1]
    spec = torch.fft.rfft(x.float(), dim=-1)
    return torch.cat([spec.real, spec.imag[..., _imag_slice(m)]], dim=-1)


def from_rfft_components(c: torch.Tensor, m: int) -> torch.Tensor:
    """Inverse of ``rfft_components``."""
    k = m // 2 + 1
    imag = torch.zeros_like(c[..., :k])
    imag[..., _imag_slice(m)] = c[..., k:]
    return torch.fft.irfft(torch.complex(c[..., :k].contiguous(), imag), n=m, dim=-1)
