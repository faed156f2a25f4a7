"""``streamvlm bench geometry``: what a frame costs at a released model's geometry, at full depth.

A ``geom-*`` model (models/geometry.py) has every per-layer size of a released checkpoint
but two text layers. The benchmark streams ``frames`` frames scaled to 1280x720 (real
footage with ``video``, else streamvlm's synthetic scene) through a lossless session
and reports, per frame:

- LLM tokens at the checkpoint's pixel budget and at the streaming default (the budget a
  checkpoint without a video processor config gets: models/preprocessing.py);
- stored bytes per codec, at full depth and in bfloat16, what a GPU stores (the model may
  run in float32 on a CPU): the session's blocks, cast to bfloat16, their layers repeated
  up to the released model's layer count, committed to a ``BlockMemory`` whose host tier
  stores them through the codec. A block costs what the tier stores (``StoredBlock.nbytes``:
  the codec's tensors and the block's positions, kept mask and key summary) plus what the
  memory keeps in RAM beside it (``stats().metadata_bytes``); per-stream codec state is left out;
- the largest position span any forward of the session used;
- seconds per step, each measured on its own in the same run (median of ``repeats``):
  preprocessing and the vision tower per frame (at the checkpoint's two vision blocks),
  the LLM prefill per layer per frame (against the sink and the encoding window), the
  key summary per layer per block, each codec's encode / decode of the last block at
  full depth (each layer its own tensors) per layer, and one search of a ``LayeredIndex``
  of 3600 random summaries at full depth. Each codec's GB/s (bfloat16 KV bytes per
  second) is set beside a ``clone`` of the same tensors.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from .quant import LOSSY_CODECS, median_seconds

FRAME_SIZE = (1280, 720)  # 720p, width x height: every frame is scaled to it
INDEX_BLOCKS = 3600  # blocks in the index searched: an hour of 1-fps LLaVA-OneVision blocks
SEARCH_K = 8  # blocks retrieved by that search
HOUR_S = 3600


@dataclass
class GeometryBenchConfig:
    """What ``run_geometry_bench`` measures (``streamvlm bench geometry``'s options)."""

    model: str = "geom-qwen2.5-vl-7b"
    video: str | None = None  # real footage; None: the synthetic scene
    frames: int = 8  # sampled at 1 fps; rounded down to whole chunks
    codecs: tuple[str, ...] = ("identity", *LOSSY_CODECS)
    repeats: int = 3  # timing repeats (median)
    seed: int = 0
    device: str | None = None
    dtype: str | None = None


@dataclass
class CodecFigures:
    """One block codec's bytes and speed; bytes at full depth, seconds per layer."""

    codec: str
    bits_per_element: float  # stored bits per K/V element, codec scales and masks included
    bytes_per_frame: float  # at full depth: stored block bytes and metadata_bytes, per frame
    encode_s_per_layer_per_block: float
    decode_s_per_layer_per_block: float
    encode_gb_s: float  # bfloat16 KV bytes in per second
    decode_gb_s: float  # bfloat16 KV bytes out per second
    copy_gb_s: float  # torch clone of the same bytes, same device, same run


@dataclass
class GeometryBenchResult:
    """What one run measured; ``to_dict`` is the ``--json`` document."""

    config: dict
    released: str  # the hub id whose geometry the model has
    layers: int  # text layers of the checkpoint measured
    full_depth_layers: int  # the released model's, that per-layer figures are scaled to
    tokens_per_frame: dict[str, float]  # "checkpoint" and "streaming_default" pixel budgets
    metadata_bytes_per_frame: float  # at full depth, in every codec's bytes_per_frame
    max_position_span_used: int
    time_breakdown_s: dict[str, float]
    codecs: list[CodecFigures] = field(default_factory=list)

    def to_dict(self) -> dict:
        per_frame = {c.codec: c.bytes_per_frame for c in self.codecs}
        return {
            "config": self.config,
            "released": self.released,
            "layers": self.layers,
            "full_depth_layers": self.full_depth_layers,
            "kv_dtype": "bfloat16",
            "frame_size": list(FRAME_SIZE),
            "tokens_per_frame": self.tokens_per_frame,
            "kv_bytes_per_frame": per_frame,
            "bytes_per_hour_1fps": {name: HOUR_S * b for name, b in per_frame.items()},
            "metadata_bytes_per_frame": self.metadata_bytes_per_frame,
            "max_position_span_used": self.max_position_span_used,
            "time_breakdown_s": self.time_breakdown_s
            | {
                "codec_encode_per_layer_per_block": {
                    c.codec: c.encode_s_per_layer_per_block for c in self.codecs
                },
                "codec_decode_per_layer_per_block": {
                    c.codec: c.decode_s_per_layer_per_block for c in self.codecs
                },
            },
            "codecs": [asdict(c) for c in self.codecs],
        }


def footage(config: GeometryBenchConfig, count: int) -> list[tuple[object, float]]:
    """``count`` frames ``(rgb, t)`` at 1 fps, scaled to ``FRAME_SIZE``."""
    from ..errors import ConfigError
    from ..ingest import FileSource, Sampler
    from ..ingest.preprocess import resize_bicubic
    from ..samples import SceneRenderer

    width, height = FRAME_SIZE
    if config.video is None:
        scene = SceneRenderer(width, height, count, 1.0, seed=config.seed)
        return [(scene.frame(i), float(i)) for i in range(count)]
    frames = []
    for frame in Sampler(1.0).sample(FileSource(config.video)):
        frames.append((resize_bicubic(frame.rgb, height, width), frame.t))
        if len(frames) == count:
            return frames
    raise ConfigError(
        f"{config.video} has {len(frames)} frames at 1 fps, fewer than the {count} asked; "
        "pass --frames with a smaller number or a longer --video"
    )


def run_geometry_bench(
    config: GeometryBenchConfig, log: Callable[[str], None] = print
) -> GeometryBenchResult:
    """Measure ``config.model`` as the module docstring says; ``log`` gets progress lines and
    one row per codec as it is measured."""
    from ..config import MemoryConfig
    from ..errors import ConfigError
    from ..models.geometry import GEOMETRY_MODELS, geometry_spec
    from ..runtime.engine import StreamVLM

    if config.model not in GEOMETRY_MODELS:
        raise ConfigError(
            f"bench geometry measures a real-geometry model; use --model with one of "
            f"{', '.join(GEOMETRY_MODELS)}, not {config.model!r}"
        )
    engine = StreamVLM.from_pretrained(config.model, device=config.device, dtype=config.dtype)
    backend = engine.backend
    session = engine.new_session(memory=MemoryConfig(host_codec="identity"))
    count = config.frames - config.frames % session.chunk_frames
    if count < 1:
        raise ConfigError(f"--frames must be at least {session.chunk_frames} (one chunk) for {config.model}")
    frames = footage(config, count)
    log(f"{config.model}: streaming {count} frames of {FRAME_SIZE[0]}x{FRAME_SIZE[1]}")
    session.add_frames(frames)
    stats = session.stats()
    blocks = session.blocks.load(m.id for m in session.blocks.metas())
    full_depth = geometry_spec(config.model).released_layers
    seconds = step_seconds(session, frames[-session.chunk_frames :], blocks[-1], config.repeats)
    seconds["index_search_3600_blocks"] = index_search_seconds(
        full_depth, backend.num_kv_heads * backend.head_dim, config
    )
    deployed = [at_full_depth(block, full_depth) for block in blocks]
    log(ROW_HEADER)
    codecs, metadata = [], 0.0
    for name in config.codecs:
        figures, metadata = measure_codec(name, backend, deployed, config.repeats)
        codecs.append(figures)
        log(format_row(figures))
    return GeometryBenchResult(
        config=asdict(config),
        released=geometry_spec(config.model).released,
        layers=backend.num_layers,
        full_depth_layers=full_depth,
        tokens_per_frame={
            "checkpoint": stats.visual_tokens_seen / stats.frames_encoded,
            "streaming_default": streaming_tokens_per_frame(backend, frames[: session.chunk_frames]),
        },
        metadata_bytes_per_frame=metadata,
        max_position_span_used=stats.max_position_span_used,
        time_breakdown_s=seconds,
        codecs=codecs,
    )


def streaming_tokens_per_frame(backend, frames) -> float:
    """LLM tokens per frame of ``frames`` (one chunk) with the streaming default pixel budget:
    the preprocessing a checkpoint without processor configs gets."""
    from ..models.loading import preprocess_for

    streaming = copy.copy(backend)  # the same model, another preprocessing
    streaming.preprocess = preprocess_for(backend.model.config, {}, {}, None)
    times = [t - frames[0][1] for _, t in frames]
    chunk = streaming.encode_frames([rgb for rgb, _ in frames], times, video_start=0, next_position=0)
    return chunk.embeds.shape[0] / len(frames)


def step_seconds(session, frames, block, repeats: int) -> dict[str, float]:
    """Seconds of each step of encoding ``frames`` (one chunk) the way ``session`` does, and
    of summarising ``block``'s keys."""
    from ..retrieval.summaries import block_summary
    from ..runtime.context import layer_parts

    backend = session.backend
    rgb = [f for f, _ in frames]
    times = [t - session.state.t0 for _, t in frames]

    def encode():
        return backend.encode_frames(
            rgb, times, video_start=session.video_start, next_position=session.next_position
        )

    preprocess = median_seconds(lambda: backend.preprocess(rgb), repeats)
    vision = median_seconds(encode, repeats) - preprocess
    chunk = encode()
    window = session.blocks.window(session.memory.window)
    parts = layer_parts(session.sink.kv, window)
    # the session's way: the context written into a cache with room for the chunk, then the forward
    prefill = median_seconds(
        lambda: backend.forward(
            chunk.embeds, chunk.positions, backend.cache_of_parts(parts, chunk.embeds.shape[0])
        ),
        repeats,
    )
    summary = median_seconds(lambda: block_summary(backend, block.layers, block.meta.positions), repeats)
    return {
        "preprocess_per_frame": preprocess / len(frames),
        "vision_tower_per_frame": vision / len(frames),
        "prefill_per_layer_per_frame": prefill / backend.num_layers / len(frames),
        "key_summary_per_layer_per_block": summary / backend.num_layers,
    }


def index_search_seconds(layers: int, dim: int, config: GeometryBenchConfig) -> float:
    """One question's search of a ``LayeredIndex`` holding ``INDEX_BLOCKS`` random summaries."""
    import numpy as np
    import torch

    from ..config import MemoryConfig
    from ..retrieval.layered import LayeredIndex

    memory = MemoryConfig()
    index = LayeredIndex(layers, dim, groups=memory.index_groups, metric=memory.metric)
    generator = torch.Generator().manual_seed(config.seed)
    index.add(np.arange(INDEX_BLOCKS), torch.randn(INDEX_BLOCKS, layers, dim, generator=generator))
    query = torch.randn(layers, dim, generator=generator)
    return median_seconds(lambda: index.search(query, SEARCH_K), config.repeats)


def at_full_depth(block, layers: int):
    """``block`` as the released model would store it: in bfloat16, its layers (and key
    summary rows) repeated in turn up to ``layers``, each layer its own tensors."""
    import dataclasses

    import torch

    from ..memory.block import Block

    repeat = [i % len(block.layers) for i in range(layers)]
    meta = dataclasses.replace(block.meta, summary=block.meta.summary[repeat])
    layers = tuple(tuple(t.to(torch.bfloat16, copy=True) for t in block.layers[i]) for i in repeat)
    return Block(meta, layers)


def measure_codec(name: str, backend, blocks, repeats: int) -> tuple[CodecFigures, float]:
    """Codec ``name`` on ``blocks`` (``at_full_depth``): its figures, and the memory's
    metadata bytes per frame."""
    import torch

    from ..config import MemoryConfig
    from ..memory.codec import get_block_codec
    from ..memory.manager import BlockMemory

    at_depth = copy.copy(backend)  # what BlockMemory reads of the model, at the released depth
    at_depth.num_layers = len(blocks[0].layers)
    memory = BlockMemory.create(MemoryConfig(device_bytes=0, host_codec=name, host_bytes=1 << 50), at_depth)
    for block in blocks:
        meta = block.meta
        memory.commit(
            block.layers,
            t_start=meta.t_start,
            t_end=meta.t_end,
            frames=meta.frames,
            positions=meta.positions,
            kept=meta.kept,
            summary=meta.summary,
            session_record={},
        )
    stats = memory.stats()
    frames = sum(b.meta.frames for b in blocks)
    codec, block = get_block_codec(name), blocks[-1]
    tensors = [t for layer in block.layers for t in layer]
    gigabytes = sum(t.nbytes for t in tensors) / 1e9
    encode_s = median_seconds(lambda: codec.encode(block), repeats)
    stored = codec.encode(block)
    decode_s = median_seconds(lambda: codec.decode(stored, backend.device, torch.bfloat16), repeats)
    copy_s = median_seconds(lambda: [t.clone() for t in tensors], repeats)
    figures = CodecFigures(
        codec=codec.name,
        bits_per_element=stats.kv_bits_per_element["host"],
        bytes_per_frame=(stats.bytes_per_tier["host"] + stats.metadata_bytes) / frames,
        encode_s_per_layer_per_block=encode_s / len(block.layers),
        decode_s_per_layer_per_block=decode_s / len(block.layers),
        encode_gb_s=gigabytes / encode_s,
        decode_gb_s=gigabytes / decode_s,
        copy_gb_s=gigabytes / copy_s,
    )
    return figures, stats.metadata_bytes / frames


ROW_HEADER = (
    f"{'codec':>11} {'bits/el':>7} {'KB/frame':>9} {'GB/h 1fps':>9} {'enc ms/layer':>12} "
    f"{'dec ms/layer':>12} {'copy GB/s':>9} {'enc/copy':>8} {'dec/copy':>8}"
)


def format_row(c: CodecFigures) -> str:
    return (
        f"{c.codec:>11} {c.bits_per_element:7.3f} {c.bytes_per_frame / 1e3:9.1f} "
        f"{c.bytes_per_frame * HOUR_S / 1e9:9.2f} {1e3 * c.encode_s_per_layer_per_block:12.2f} "
        f"{1e3 * c.decode_s_per_layer_per_block:12.2f} {c.copy_gb_s:9.2f} {c.encode_gb_s / c.copy_gb_s:8.3f} "
        f"{c.decode_gb_s / c.copy_gb_s:8.3f}"
    )


def summary_lines(result: GeometryBenchResult) -> list[str]:
    """The human report: tokens, positions, seconds per step (the codec table is logged as it runs)."""
    tokens = result.tokens_per_frame
    t = result.time_breakdown_s
    return [
        f"{result.config['model']}: {result.released} geometry, {result.full_depth_layers} layers at full depth "
        f"(measured on {result.layers}); bytes in bfloat16 with metadata "
        f"({result.metadata_bytes_per_frame / 1e3:.1f} KB/frame)",
        f"LLM tokens per frame: {tokens['checkpoint']:g} at the checkpoint's pixel budget, "
        f"{tokens['streaming_default']:g} at the streaming default",
        f"largest position span used: {result.max_position_span_used}",
        f"seconds: preprocess {t['preprocess_per_frame']:.4f}/frame, vision tower "
        f"{t['vision_tower_per_frame']:.4f}/frame, prefill {t['prefill_per_layer_per_frame']:.4f}/layer/frame, "
        f"key summary {t['key_summary_per_layer_per_block']:.5f}/layer/block, index search "
        f"({INDEX_BLOCKS} blocks, {result.full_depth_layers} layers) {t['index_search_3600_blocks']:.4f}",
    ]
