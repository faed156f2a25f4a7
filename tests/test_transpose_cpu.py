"""The CPU kernels' register transposes (``kernels/transpose_cpu.py``) against numpy and torch:
every element in its place, converted like ``Tensor.to``, ragged edges and strided rows included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from streamvlm.kernels.cpu_common import OUT_BF16, OUT_F16, OUT_F32  # noqa: E402
from streamvlm.kernels.transpose_cpu import padded, transpose_out, transpose_u8  # noqa: E402

MODES = {OUT_F32: torch.float32, OUT_F16: torch.float16, OUT_BF16: torch.bfloat16}


def _expected(src: np.ndarray, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(src[:rows, :cols].T.copy()).to(dtype)


def _as_torch(dst: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(dst))
    return t if dtype == torch.float32 else t.view(torch.int16).view(dtype)


@pytest.mark.parametrize("mode", list(MODES), ids=lambda m: str(MODES[m]).removeprefix("torch."))
@pytest.mark.parametrize("shape", [(8, 8), (128, 128), (13, 21), (64, 37), (5, 3)], ids=str)
def test_transpose_out_matches_numpy_and_torch_rounding(mode, shape) -> None:
    rows, cols = shape
    rng = np.random.default_rng(rows * 100 + cols)
    # values that round: random float32 scaled over a wide range, plus exact halfway cases
    src = (
        rng.standard_normal((rows + 3, cols + 5)) * 10.0 ** rng.integers(-6, 6, (rows + 3, cols + 5))
    ).astype(np.float32)
    src[0, :2] = [1.0 + 2.0**-11, 1.0 + 2.0**-8]  # float16 / bfloat16 ties to even
    dtype = MODES[mode]
    dst = np.full((cols + 2, rows + 4), 7, np.float32 if mode == OUT_F32 else np.uint16)
    transpose_out(src, dst, rows, cols, mode)
    got = _as_torch(dst[:cols, :rows], dtype)
    assert torch.equal(got.view(torch.uint8), _expected(src, rows, cols, dtype).view(torch.uint8))
    assert (dst[cols:] == 7).all() and (dst[:, rows:] == 7).all()  # nothing outside the block


def test_transpose_out_into_rows_with_gaps_goes_element_by_element() -> None:
    src = np.arange(16 * 24, dtype=np.float32).reshape(16, 24)
    dst = np.zeros((24, 32), np.uint16)[:, ::2]  # every other column: not contiguous rows
    transpose_out(src, dst, 16, 24, OUT_F16)
    assert np.array_equal(dst.view(np.float16), src.T.astype(np.float16))


def test_transpose_u8_reads_and_writes_whole_tiles() -> None:
    rows, cols, stride = 13, 5, 5  # rows packed back to back, 5 bytes each
    src = np.arange(rows * stride + 8 * stride + 8, dtype=np.uint8)
    dst = np.zeros((padded(cols), padded(rows)), np.uint8)
    transpose_u8(src, 3, stride, rows, cols, dst)
    want = src[3 : 3 + rows * stride].reshape(rows, stride)[:, :cols].T
    assert np.array_equal(dst[:cols, :rows], want)


def test_transpose_u8_refuses_what_whole_tiles_would_overrun() -> None:
    src = np.zeros(13 * 5, np.uint8)  # no padding after the last row
    with pytest.raises(ValueError, match="whole tiles"):
        transpose_u8(src, 0, 5, 13, 5, np.zeros((8, 16), np.uint8))
    with pytest.raises(ValueError, match="destination"):
        transpose_u8(np.zeros(200, np.uint8), 0, 5, 13, 5, np.zeros((8, 8), np.uint8))
