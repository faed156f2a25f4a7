"""``streamvlm bench gpu``: the GPU check of issue 20, one command that gives every figure.

Two parts, on CUDA in bfloat16 (a dry run on the CPU in float32 runs the same code):

- **Kernel checks.** For ``kivi2``, ``kivi4`` and ``vidkv``, one layer's keys and values
  at Qwen2.5-VL-7B geometry (``[4 KV heads, 720 tokens, 128]``: a 2-frame block of 360
  tokens a frame; ``quant/synthetic.py`` with outlier channels), the fast path against the
  reference, bit for bit: decode with the Triton kernels on CUDA (the numba kernels on a
  CPU), and encode with the numba kernels on a CPU. There is no Triton encoder: on CUDA
  encode runs the reference in torch on the GPU, and its bytes are compared with the
  reference's on the CPU. On CUDA, the Triton ``pack_bits`` / ``unpack_bits`` /
  ``pack_trits`` too. Each check says its path, whether the bytes (or floats) are equal,
  the largest difference and both times.
- **Models.** Each ``geom-*`` model (released per-layer sizes, 2 text layers and 2 vision
  blocks: models/geometry.py) streams 720p footage at 1 fps with the memory its checkpoint
  recommends (``engine.memory()``), the device tier scaled to the checkpoint's depth so that
  it holds as many frames as at the released depth (blocks then leave it, through the
  codec, where the released model's would). One chunk of warm-up is streamed first and left
  out. Reported: frames/s (wall clock, CUDA synchronised after every frame), the time per
  frame of the first and last quarter of the stream, each step's seconds per frame
  (``split_s_per_frame``), the median time to first token of 3 one-token asks, the peak
  device memory, and frames/s projected to the released depth: per-layer steps times the
  released text layers, the vision tower times the released vision blocks over the
  checkpoint's.

Top-level ``frames_per_s``, ``frames_per_s_full_depth``, ``ttft_s`` and
``peak_device_bytes`` are the first model's (Qwen2.5-VL-7B by default), set against
``TARGET_FRAMES_PER_S`` (issue 20: twice StreamingVLM's 8 FPS on one H100-class GPU).
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..models.catalog import GEOM_LLAVA_7B, GEOM_QWEN_7B

TARGET_FRAMES_PER_S = 16.0
DEFAULT_MODELS: tuple[str, ...] = (GEOM_QWEN_7B, GEOM_LLAVA_7B)
# measured frames after the warm-up chunk: the recommended window (32 frames) fills in the
# first half; Qwen2.5-VL-7B's blocks start leaving the (scaled) device tier near frame 50, as
# at full depth, so its last quarter goes through the codec (LLaVA-OV-7B's near frame 94)
CUDA_FRAMES = 64
DRY_RUN_FRAMES = 2
KERNEL_CODECS: tuple[str, ...] = ("kivi2", "kivi4", "vidkv")
KERNEL_SHAPE = (4, 720, 128)  # Qwen2.5-VL-7B: KV heads, a 2-frame block's tokens, head_dim
DRY_RUN_KERNEL_TOKENS = 64  # the CPU references take seconds at 720 tokens
PACK_BITS = (2, 4)
TTFT_ASKS = 3
QUESTION = "What is happening in the video?"


@dataclass
class GpuBenchConfig:
    """What ``run_gpu_bench`` measures (``streamvlm bench gpu``'s options)."""

    models: tuple[str, ...] = DEFAULT_MODELS
    frames: int | None = None  # measured frames per model; None: CUDA_FRAMES, or DRY_RUN_FRAMES
    video: str | None = None  # real footage; None: the synthetic scene written as a 720p clip
    repeats: int = 3  # timing repeats (median)
    device: str | None = None  # None: cuda when available
    dry_run: bool = False  # also automatic without CUDA
    seed: int = 0


@dataclass
class KernelCheck:
    """One kernel against its reference on the same input."""

    codec: str  # a KV codec, or "packing"
    kind: str  # key / value, or the packed code width
    op: str  # encode, decode, pack_bits, unpack_bits, pack_trits
    path: str  # what ran as the fast side: triton, cpu, or reference (then note says against what)
    exact: bool  # bytes (encode, packing) or floats (decode) equal
    max_abs_diff: float
    fast_s: float
    reference_s: float
    shape: list[int]
    note: str = ""


@dataclass
class ModelFigures:
    """One model's stream; seconds per frame at the checkpoint's depth unless named full depth."""

    model: str
    released: str
    layers: int
    full_depth_layers: int
    vision_blocks: int
    full_depth_vision_blocks: int
    chunk_frames: int
    frames: int  # measured, after one chunk of warm-up
    tokens_per_frame: float
    memory: dict  # the recommended MemoryConfig's codecs and tier budgets, as streamed
    frames_per_s: float
    per_frame_ms_first: float  # first quarter of the measured frames (chunk averages)
    per_frame_ms_last: float  # last quarter
    per_frame_last_over_first: float
    split_s_per_frame: dict[str, float]
    ttft_s: float
    peak_device_bytes: int
    peak_device_bytes_is: str  # what was read: torch.cuda.max_memory_allocated, or peak RSS
    frames_per_s_full_depth: float
    target_frames_per_s: float = TARGET_FRAMES_PER_S


@dataclass
class GpuBenchResult:
    """What one run measured; ``to_dict`` is the ``--json`` document."""

    config: dict
    device: str
    dry_run: bool
    dtype: str
    kernel_checks: list[KernelCheck] = field(default_factory=list)
    models: list[ModelFigures] = field(default_factory=list)

    @property
    def kernels_exact(self) -> bool:
        return all(c.exact for c in self.kernel_checks)

    def to_dict(self) -> dict:
        first = self.models[0]
        return {
            "device": self.device,
            "dry_run": self.dry_run,
            "dtype": self.dtype,
            "config": self.config,
            "kernels_exact": self.kernels_exact,
            "kernel_checks": [asdict(c) for c in self.kernel_checks],
            "models": {m.model: asdict(m) for m in self.models},
            "top_level_model": first.model,
            "frames_per_s": first.frames_per_s,
            "frames_per_s_full_depth": first.frames_per_s_full_depth,
            "ttft_s": first.ttft_s,
            "peak_device_bytes": first.peak_device_bytes,
            "target_frames_per_s": TARGET_FRAMES_PER_S,
        }


def run_gpu_bench(config: GpuBenchConfig, log: Callable[[str], None] = print) -> GpuBenchResult:
    """Run the kernel checks, then stream each model, as the module docstring says; ``log``
    gets progress lines."""
    import torch

    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dry_run = config.dry_run or device.type != "cuda"
    if dry_run:
        device = torch.device("cpu")
    dtype = torch.float32 if dry_run else torch.bfloat16
    frames = config.frames or (DRY_RUN_FRAMES if dry_run else CUDA_FRAMES)
    result = GpuBenchResult(
        config=asdict(config) | {"frames": frames},
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        dry_run=dry_run,
        dtype=str(dtype).removeprefix("torch."),
    )
    tokens = DRY_RUN_KERNEL_TOKENS if dry_run else KERNEL_SHAPE[1]
    log(f"{result.device}{' (dry run)' if dry_run else ''}: kernel checks at {tokens} tokens")
    result.kernel_checks = kernel_checks(device, dtype, tokens, config.repeats, config.seed)
    if tokens != KERNEL_SHAPE[1]:
        for check in result.kernel_checks:
            shrunk = f"dry run: {tokens} tokens, not {KERNEL_SHAPE[1]}"
            check.note = f"{shrunk}; {check.note}" if check.note else shrunk
    for check in result.kernel_checks:
        log(format_check(check))
    with tempfile.TemporaryDirectory(prefix="streamvlm-bench-gpu-") as tmp:
        for name in config.models:
            figures = measure_model(name, config, frames, device, dtype, Path(tmp), log)
            result.models.append(figures)
            log(format_model(figures))
    return result


# ----- kernel checks ---------------------------------------------------------------------


def kernel_checks(device, dtype, tokens: int, repeats: int, seed: int) -> list[KernelCheck]:
    """Every codec's encode and decode of one layer's K and V, and on CUDA the packing kernels."""
    import torch

    from ..quant import get_kv_codec
    from ..quant.synthetic import synthetic_kv

    heads, _, head_dim = KERNEL_SHAPE
    _, k, v = synthetic_kv(heads, tokens, head_dim, queries=1, outliers=4, seed=seed)
    checks = []
    for name in KERNEL_CODECS:
        # two codec objects for encoding: vidkv freezes each layer's key channels on its first
        # block, and each side must do that itself, from the same block
        fast_codec, ref_codec = get_kv_codec(name), get_kv_codec(name)
        for kind, x in (("key", k), ("value", v)):
            x = x.to(dtype)
            encoded, check = encode_check(name, kind, fast_codec, ref_codec, x, device, repeats)
            checks += [check, decode_check(name, kind, ref_codec, encoded, device, dtype, repeats)]
    if device.type == "cuda":
        codes = torch.Generator().manual_seed(seed)
        for bits in PACK_BITS:
            x = torch.randint(0, 1 << bits, (heads, tokens * head_dim), generator=codes, dtype=torch.uint8)
            checks += packing_checks(f"{bits}-bit", x.to(device), bits, repeats)
        x = torch.randint(0, 3, (heads, tokens * head_dim), generator=codes, dtype=torch.uint8)
        checks += packing_checks("trits", x.to(device), None, repeats)
    return checks


def encode_check(name, kind, fast_codec, ref_codec, x, device, repeats: int):
    """(the reference's encoding on the CPU, the check of the fast path's encoding against it)."""
    from .. import kernels
    from .quant import median_seconds

    reference = ref_codec.encode(x, kind)
    on_device = x.to(device)
    # no Triton encoder: on CUDA the runtime encodes with the reference, in torch on the GPU
    path = kernels.path_for(fast_codec, x.shape[1], device)
    fast = kernels.encode(fast_codec, on_device, kind, backend=path)
    exact, diff = _same_tensors({n: t.cpu() for n, t in fast.tensors.items()}, dict(reference.tensors))
    note = ""
    if device.type == "cuda":
        note = "no Triton encoder: the reference in torch on the GPU, against the reference on the CPU"
    elif path == "reference":
        note = "numba does not import (pip install 'streamvlm[cpu]'): the reference against itself"
    return reference, KernelCheck(
        codec=name,
        kind=kind,
        op="encode",
        path=f"reference on {device.type}" if device.type == "cuda" else path,
        exact=exact,
        max_abs_diff=diff,
        fast_s=median_seconds(lambda: kernels.encode(fast_codec, on_device, kind, backend=path), repeats),
        reference_s=median_seconds(lambda: ref_codec.encode(x, kind), repeats),
        shape=list(x.shape),
        note=note,
    )


def decode_check(name, kind, codec, encoded, device, dtype, repeats: int) -> KernelCheck:
    """The fast decode of ``encoded`` against the reference's, both on ``device`` in ``dtype``
    and with the ``codec`` that encoded it (its vidkv channel tiers): only the path differs."""
    import torch

    from .. import kernels
    from ..kernels import reference
    from .quant import median_seconds

    path = kernels.path_for(codec, encoded.shape[1], device)
    fast = kernels.decode(encoded, codec, device, dtype, backend=path)
    ref = reference.decode(encoded, codec, device, dtype)
    return KernelCheck(
        codec=name,
        kind=kind,
        op="decode",
        path=path,
        exact=torch.equal(fast, ref),
        max_abs_diff=float((fast.double() - ref.double()).abs().max()),
        fast_s=median_seconds(lambda: kernels.decode(encoded, codec, device, dtype, backend=path), repeats),
        reference_s=median_seconds(lambda: reference.decode(encoded, codec, device, dtype), repeats),
        shape=list(encoded.shape),
        note="" if path != "reference" else "no kernel on this machine: the reference against itself",
    )


def packing_checks(kind: str, codes, bits: int | None, repeats: int) -> list[KernelCheck]:
    """Triton packing of ``codes`` (and, for bit widths, unpacking) against the reference."""
    from .. import kernels
    from ..kernels import reference
    from .quant import median_seconds

    length = codes.shape[-1]
    if bits is None:
        ops = [
            (
                "pack_trits",
                lambda b: kernels.pack_trits(codes, backend=b),
                lambda: reference.pack_trits(codes),
            )
        ]
    else:
        packed = reference.pack_bits(codes, bits)
        ops = [
            (
                "pack_bits",
                lambda b: kernels.pack_bits(codes, bits, backend=b),
                lambda: reference.pack_bits(codes, bits),
            ),
            (
                "unpack_bits",
                lambda b: kernels.unpack_bits(packed, bits, length, backend=b),
                lambda: reference.unpack_bits(packed, bits, length),
            ),
        ]
    checks = []
    for op, fast, ref in ops:
        exact, diff = _same_tensors({op: fast("triton")}, {op: ref()})
        checks.append(
            KernelCheck(
                codec="packing",
                kind=kind,
                op=op,
                path="triton",
                exact=exact,
                max_abs_diff=diff,
                fast_s=median_seconds(lambda fast=fast: fast("triton"), repeats),
                reference_s=median_seconds(ref, repeats),
                shape=list(codes.shape),
            )
        )
    return checks


def _same_tensors(got: dict, want: dict) -> tuple[bool, float]:
    """(whether ``got`` holds ``want``'s tensors bit for bit, the largest difference of a value)."""
    import torch

    if list(got) != list(want):
        return False, float("inf")
    exact, diff = True, 0.0
    for name, t in want.items():
        g = got[name]
        if g.dtype != t.dtype or g.shape != t.shape:
            return False, float("inf")
        exact = exact and torch.equal(g.contiguous().view(torch.uint8), t.contiguous().view(torch.uint8))
        if t.numel():
            diff = max(diff, float((g.double() - t.double()).abs().max()))
    return exact, diff


# ----- models ----------------------------------------------------------------------------


def measure_model(
    name: str, config: GpuBenchConfig, frames: int, device, dtype, tmp: Path, log
) -> ModelFigures:
    """Stream model ``name`` and measure it (the module docstring's "Models")."""
    from ..models.geometry import RELEASED_VISION_BLOCKS, VISION_LAYERS, geometry_spec
    from ..runtime.engine import StreamVLM
    from .geometry import GeometryBenchConfig, footage

    log(f"{name}: loading in {str(dtype).removeprefix('torch.')} on {device}")
    engine = StreamVLM.from_pretrained(name, device=str(device), dtype=dtype, seed=config.seed)
    backend = engine.backend
    full_depth = geometry_spec(name).released_layers
    recommended = engine.memory()
    memory = engine.memory(device_bytes=recommended.device_bytes * backend.num_layers // full_depth)
    session = engine.new_session(memory=memory)
    chunk = session.chunk_frames
    measured = -(-frames // chunk) * chunk  # whole chunks
    video = config.video or str(_write_clip(tmp / f"{name}.mp4", chunk + measured, config.seed))
    started = time.perf_counter()
    clip = footage(GeometryBenchConfig(model=name, video=video, seed=config.seed), chunk + measured)
    video_decode = (time.perf_counter() - started) / len(clip)
    log(f"{name}: streaming {chunk} warm-up + {measured} frames of 720p at 1 fps")
    _reset_peak(device)
    for rgb, t in clip[:chunk]:
        session.add_frame(rgb, t)
    seconds = []
    for rgb, t in clip[chunk:]:
        _synchronize(device)
        started = time.perf_counter()
        session.add_frame(rgb, t)
        _synchronize(device)
        seconds.append(time.perf_counter() - started)
    ttft = statistics.median(session.ask(QUESTION, max_new_tokens=1).timings.ttft_s for _ in range(TTFT_ASKS))
    peak, peak_is = _peak_bytes(device)
    stats = session.stats()
    layers = backend.num_layers
    split = split_seconds(session, clip[-chunk:], video_decode, memory.host_codec, full_depth, config.repeats)
    vision_full = RELEASED_VISION_BLOCKS[name]
    full = full_depth_seconds(split, full_depth, vision_full / VISION_LAYERS)
    # a chunk's cost lands on its last frame: per-frame times are chunk averages
    per_frame = [sum(seconds[i : i + chunk]) / chunk for i in range(0, len(seconds), chunk)]
    quarter = max(1, len(per_frame) // 4)
    first, last = statistics.fmean(per_frame[:quarter]), statistics.fmean(per_frame[-quarter:])
    session.close()
    del session, engine, backend
    _free(device)
    return ModelFigures(
        model=name,
        released=geometry_spec(name).released,
        layers=layers,
        full_depth_layers=full_depth,
        vision_blocks=VISION_LAYERS,
        full_depth_vision_blocks=vision_full,
        chunk_frames=chunk,
        frames=measured,
        tokens_per_frame=stats.visual_tokens_seen / stats.frames_encoded,
        memory={
            "host_codec": memory.host_codec,
            "disk_codec": memory.disk_codec,
            "window": memory.window,
            "device_bytes": memory.device_bytes,
            "device_bytes_recommended": recommended.device_bytes,
        },
        frames_per_s=measured / sum(seconds),
        per_frame_ms_first=1e3 * first,
        per_frame_ms_last=1e3 * last,
        per_frame_last_over_first=last / first,
        split_s_per_frame=split,
        ttft_s=ttft,
        peak_device_bytes=peak,
        peak_device_bytes_is=peak_is,
        frames_per_s_full_depth=1.0 / full,
    )


def split_seconds(session, frames, video_decode: float, codec: str, full_depth: int, repeats: int) -> dict:
    """Seconds per frame of each step of the stream, measured on their own after it (median of
    ``repeats``): ``geometry.step_seconds`` for the model's steps on ``frames`` (the last chunk),
    ``geometry.measure_codec`` for ``codec`` on the last blocks at full depth, and a pinned
    device->host->device copy of a block's stored bytes. ``*_per_layer`` steps are per text layer."""
    from .geometry import at_full_depth, measure_codec, step_seconds

    backend = session.backend
    blocks = session.blocks.load(m.id for m in list(session.blocks.metas())[-2:])
    steps = step_seconds(session, frames, blocks[-1], repeats)
    figures, _ = measure_codec(codec, backend, [at_full_depth(b, full_depth) for b in blocks], repeats)
    per_block = blocks[-1].meta.frames
    moved = round(figures.bytes_per_frame * per_block)
    return {
        "video_decode": video_decode,
        "preprocess": steps["preprocess_per_frame"],
        "vision_tower": steps["vision_tower_per_frame"],
        "prefill_per_layer": steps["prefill_per_layer_per_frame"],
        "key_summary_per_layer": steps["key_summary_per_layer_per_block"] / per_block,
        "codec_encode_per_layer": figures.encode_s_per_layer_per_block / per_block,
        "transfers": transfer_seconds(moved, backend.device, repeats) / per_block,
    }


def full_depth_seconds(split: dict[str, float], layers: int, vision_scale: float) -> float:
    """Seconds per frame at the released depth: ``*_per_layer`` steps times ``layers``, the vision
    tower times ``vision_scale`` (its fixed costs too: an upper bound), the rest as measured."""
    total = 0.0
    for step, seconds in split.items():
        if step.endswith("_per_layer"):
            total += layers * seconds
        else:
            total += vision_scale * seconds if step == "vision_tower" else seconds
    return total


def transfer_seconds(nbytes: int, device, repeats: int) -> float:
    """Seconds to copy ``nbytes`` from ``device`` to pinned host memory and back (0 on the CPU:
    the host tier is the same memory)."""
    import torch

    from .quant import median_seconds

    if torch.device(device).type != "cuda" or nbytes == 0:
        return 0.0
    on_device = torch.empty(nbytes, dtype=torch.uint8, device=device)
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def both_ways():
        host.copy_(on_device, non_blocking=True)
        on_device.copy_(host, non_blocking=True)

    return median_seconds(both_ways, repeats)


def _write_clip(path: Path, frames: int, seed: int) -> Path:
    """The synthetic scene as a 720p H.264 clip at 1 fps, so that decoding is measured too."""
    from ..samples import write_video
    from .geometry import FRAME_SIZE

    return write_video(path, num_frames=frames, width=FRAME_SIZE[0], height=FRAME_SIZE[1], fps=1.0, seed=seed)


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_bytes(device) -> tuple[int, str]:
    """(peak bytes, what they are): CUDA's allocator peak since ``_reset_peak``, else the process's RSS."""
    import torch

    from .stream import peak_rss

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    return peak_rss(), "peak RSS of the process (CPU)"


def _free(device) -> None:
    """Give the finished model's memory back before the next one loads."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----- report ----------------------------------------------------------------------------


def format_check(c: KernelCheck) -> str:
    return (
        f"{c.codec:>8} {c.kind:>6} {c.op:>11} {c.path:>17} {'exact' if c.exact else 'DIFFERS':>7} "
        f"max diff {c.max_abs_diff:<9.3g} fast {1e3 * c.fast_s:8.3f} ms  reference {1e3 * c.reference_s:8.3f} ms"
        + (f"  ({c.note})" if c.note else "")
    )


def format_model(m: ModelFigures) -> str:
    split = ", ".join(f"{step} {1e3 * s:.2f}" for step, s in m.split_s_per_frame.items())
    return (
        f"{m.model}: {m.frames_per_s:.2f} frames/s at {m.layers} layers, {m.frames_per_s_full_depth:.2f} at "
        f"full depth ({m.full_depth_layers} layers; target {m.target_frames_per_s:g}); ms/frame first quarter "
        f"{m.per_frame_ms_first:.1f}, last {m.per_frame_ms_last:.1f}; ttft {m.ttft_s:.3f} s; peak "
        f"{m.peak_device_bytes / 2**30:.2f} GiB ({m.peak_device_bytes_is}); ms/frame: {split}"
    )


def summary_lines(result: GpuBenchResult) -> list[str]:
    """The human report's last lines (each check and model is logged as it is measured)."""
    doc = result.to_dict()
    return [
        f"device: {result.device}{' (dry run)' if result.dry_run else ''}, {result.dtype}",
        f"kernels exact: {result.kernels_exact} ({len(result.kernel_checks)} checks)",
        f"{doc['top_level_model']}: {doc['frames_per_s']:.2f} frames/s, {doc['frames_per_s_full_depth']:.2f} "
        f"at full depth (target {TARGET_FRAMES_PER_S:g}), ttft {doc['ttft_s']:.3f} s, "
        f"peak {doc['peak_device_bytes'] / 2**30:.2f} GiB",
    ]
