"""``streamvlm bench stream``: cost per frame, time to first token and memory against stream length.

A synthetic video of growing length streams through one session. At each checkpoint
length a question is asked ``questions`` times (retrieval on; the median time counts), and — side by side, in the same run — the
baseline a user would otherwise write answers the same question with plain transformers
``generate()`` over every frame so far, until it passes a time or memory cap.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field

from ..config import MemoryConfig


@dataclass
class StreamBenchConfig:
    model: str = "tiny-qwen2.5-vl"
    lengths: tuple[int, ...] = (100, 300, 1000, 3600)  # sampled frames at which to measure
    fps: float = 1.0
    size: int = 112  # frames are size x size pixels
    window: int = 16
    top_k: int | None = 8  # None: the default question (every block that fits the answer budget)
    device_bytes: int = 256 << 10
    host_bytes: int = 1 << 20
    answer_tokens: int | None = None  # MemoryConfig.answer_tokens (None: from the device budget)
    max_position_span: int | None = None  # MemoryConfig.max_position_span (None: the model's)
    question: str = "What colour was the circle?"
    # asks per checkpoint: one question's time is noisy (a scheduler hiccup, the first
    # answer's warm-up), so TTFT and load time are the medians over this many
    questions: int = 3
    baseline_cap_s: float = 30.0  # stop the baseline once one answer takes longer than this
    baseline_cap_bytes: int = 8 << 30  # ... or once its KV cache would pass this
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    disk_dir: str | None = None  # default: a temporary directory
    host_codec: str | None = None  # MemoryConfig.host_codec (None: its default, vidkv)
    disk_codec: str | None = None  # MemoryConfig.disk_codec (None: its default, vidkv)
    # A second session with both tiers at this codec (e.g. identity) takes every frame right
    # after the first, in the same process: what the tiers' codecs cost, measured side by side
    # (alternating frames, so a noisy machine slows both alike). None: no second session.
    codec_baseline: str | None = None


@dataclass
class Checkpoint:
    frames: int
    encode_ms_per_frame: float  # median over the frames since the previous checkpoint
    ttft_s: float  # median over the checkpoint's questions
    load_s: float  # median block-load seconds per question
    blocks_attended: int
    bytes_per_tier: dict[str, int]
    answer_mode: str  # lossless or retrieval
    context_bytes: int  # KV the question held on the device (Answer.context_bytes)
    max_position_span_used: int
    metadata_bytes: int  # host RAM outside the tier budgets (block metadata, index)
    peak_rss_bytes: int  # of this process so far
    baseline_ttft_s: float | None = None
    baseline_preprocess_s: float | None = None
    baseline_prompt_tokens: int | None = None
    # the codec_baseline session's encode time per frame and TTFT, at the same frames
    codec_baseline_encode_ms_per_frame: float | None = None
    codec_baseline_ttft_s: float | None = None


@dataclass
class StreamBenchResult:
    config: dict
    checkpoints: list[Checkpoint] = field(default_factory=list)
    baseline_stopped: str | None = None

    def ratios(self) -> dict:
        """The targets of the benchmark, as ratios within this run."""
        cps = self.checkpoints
        first, last = cps[0], cps[-1]
        reached = [c for c in cps if c.baseline_ttft_s is not None]
        out = {
            "encode_per_frame_end_over_start": last.encode_ms_per_frame / first.encode_ms_per_frame,
            "ttft_longest_over_first": last.ttft_s / first.ttft_s,
            "device_bytes_after_fill": [c.bytes_per_tier["device"] for c in cps],
            "question_context_bytes": [c.context_bytes for c in cps],
            "question_context_end_over_start": last.context_bytes / first.context_bytes,
            "host_bytes_after_fill": [c.bytes_per_tier["host"] for c in cps],
        }
        if reached:
            out["baseline_longest_frames"] = reached[-1].frames
            out["baseline_over_streamvlm_ttft"] = reached[-1].baseline_ttft_s / reached[-1].ttft_s
        if first.codec_baseline_encode_ms_per_frame is not None:
            # per checkpoint, and the median of those
            over = [c.encode_ms_per_frame / c.codec_baseline_encode_ms_per_frame for c in cps]
            out["encode_per_frame_over_codec_baseline"] = over
            out["encode_per_frame_over_codec_baseline_median"] = statistics.median(over)
            out["ttft_over_codec_baseline"] = [c.ttft_s / c.codec_baseline_ttft_s for c in cps]
        return out

    def to_dict(self) -> dict:
        return {
            "config": self.config,
            "checkpoints": [asdict(c) for c in self.checkpoints],
            "baseline_stopped": self.baseline_stopped,
            "ratios": self.ratios(),
        }


def run_stream_bench(config: StreamBenchConfig, log=print) -> StreamBenchResult:
    # here, not at the top: the CLI imports this module for its config while building the parser
    from ..runtime.engine import StreamVLM
    from ..samples import SceneRenderer

    engine = StreamVLM.from_pretrained(
        config.model, device=config.device, dtype=config.dtype, seed=config.seed
    )
    lengths = sorted(set(config.lengths))
    scene = SceneRenderer(config.size, config.size, lengths[-1], config.fps, seed=config.seed)
    result = StreamBenchResult(config=asdict(config))
    with tempfile.TemporaryDirectory(prefix="streamvlm-bench-") as tmp:
        disk_dir = config.disk_dir or tmp
        streams = [_Stream(engine, config, config.host_codec, config.disk_codec, f"{disk_dir}/session")]
        if config.codec_baseline is not None:
            codec = config.codec_baseline
            streams.append(_Stream(engine, config, codec, codec, f"{disk_dir}/codec-baseline"))
        baseline_on = True
        for i in range(lengths[-1]):
            frame = scene.frame(i)
            for stream in streams:
                stream.add_frame(frame, i / config.fps)
            if i + 1 not in lengths:
                continue
            first = not result.checkpoints
            cp = streams[0].checkpoint(i + 1, first)
            if len(streams) > 1:
                other = streams[1].checkpoint(i + 1, first)
                cp.codec_baseline_encode_ms_per_frame = other.encode_ms_per_frame
                cp.codec_baseline_ttft_s = other.ttft_s
            if baseline_on:
                baseline_on = _run_baseline(
                    config, engine.backend, streams[0].session, scene, i + 1, cp, result
                )
            result.checkpoints.append(cp)
            log(_row(cp))
        for stream in streams:
            stream.session.close()
    return result


class _Stream:
    """One session of the benchmark: its frames' encode times and its checkpoints."""

    def __init__(self, engine, config: StreamBenchConfig, host_codec, disk_codec, disk_dir: str) -> None:
        codecs = {
            name: codec
            for name, codec in (("host_codec", host_codec), ("disk_codec", disk_codec))
            if codec is not None
        }
        memory = MemoryConfig(
            window=config.window,
            top_k=config.top_k,
            device_bytes=config.device_bytes,
            host_bytes=config.host_bytes,
            answer_tokens=config.answer_tokens,
            max_position_span=config.max_position_span,
            disk_dir=disk_dir,
            **codecs,
        )
        self.config = config
        self.session = engine.new_session(memory=memory)
        self.per_frame: list[float] = []

    def add_frame(self, frame, t: float) -> None:
        started = time.perf_counter()
        self.session.add_frame(frame, t)
        self.per_frame.append(time.perf_counter() - started)

    def checkpoint(self, frames: int, first: bool) -> Checkpoint:
        """Encode time per frame since the last checkpoint, then the checkpoint's questions."""
        config, session = self.config, self.session
        # while the window fills, chunks are cheaper: leave those frames out of the first median
        segment = self.per_frame[config.window :] if first else self.per_frame
        chunk = session.chunk_frames  # a chunk's cost lands on its last frame: average over chunks
        sums = [sum(segment[j : j + chunk]) / chunk for j in range(0, len(segment) - chunk + 1, chunk)]
        self.per_frame = []
        ttfts, loads = [], []
        for _ in range(config.questions):
            load_before = session.stats().load_s
            answer = session.ask(config.question, max_new_tokens=1)
            ttfts.append(answer.timings.ttft_s)
            loads.append(session.stats().load_s - load_before)
        stats = session.stats()
        return Checkpoint(
            frames=frames,
            encode_ms_per_frame=1000 * statistics.median(sums),
            ttft_s=statistics.median(ttfts),
            load_s=statistics.median(loads),
            blocks_attended=len(answer.blocks),
            bytes_per_tier=stats.bytes_per_tier,
            answer_mode=answer.mode,
            context_bytes=answer.context_bytes,
            max_position_span_used=stats.max_position_span_used,
            metadata_bytes=stats.metadata_bytes,
            peak_rss_bytes=peak_rss(),
        )


def _run_baseline(config, backend, session, scene, frames, cp, result) -> bool:
    """Run the baseline at this length; return whether to run it at the next one."""
    from ..eval.baseline import generate_over_all_frames  # torch + transformers: not at CLI start-up

    tokens_per_frame = session.stats().tokens_stored / max(1, session.state.frames_encoded)
    expected_bytes = tokens_per_frame * frames * backend.kv_bytes_per_token
    if expected_bytes > config.baseline_cap_bytes:
        result.baseline_stopped = (
            f"at {frames} frames its KV cache would pass {config.baseline_cap_bytes} bytes"
        )
        return False
    clip = [scene.frame(j) for j in range(frames)]
    run = generate_over_all_frames(backend, session.system_prompt, clip, config.fps, config.question)
    cp.baseline_ttft_s = run["ttft_s"]
    cp.baseline_preprocess_s = run["preprocess_s"]
    cp.baseline_prompt_tokens = run["prompt_tokens"]
    if run["ttft_s"] + run["preprocess_s"] > config.baseline_cap_s:
        result.baseline_stopped = f"after {frames} frames: one answer took over {config.baseline_cap_s:g} s"
        return False
    return True


def peak_rss() -> int:
    """This process's peak resident memory in bytes."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


HEADER = (
    f"{'frames':>7} {'encode ms/frame':>16} {'ttft s':>8} {'load s':>8} {'blocks':>6} "
    f"{'device B':>10} {'host B':>10} {'disk B':>11} {'question B':>11} {'span':>7} {'meta B':>10} "
    f"{'baseline ttft s':>16} {'codec-baseline ms/frame':>24}"
)


def _row(cp: Checkpoint) -> str:
    b = cp.bytes_per_tier
    base = f"{cp.baseline_ttft_s:16.3f}" if cp.baseline_ttft_s is not None else f"{'-':>16}"
    codec_base = cp.codec_baseline_encode_ms_per_frame
    codec_base = f"{codec_base:24.2f}" if codec_base is not None else f"{'-':>24}"
    return (
        f"{cp.frames:7d} {cp.encode_ms_per_frame:16.2f} {cp.ttft_s:8.4f} {cp.load_s:8.4f} {cp.blocks_attended:6d} "
        f"{b['device']:10d} {b['host']:10d} {b['disk']:11d} {cp.context_bytes:11d} "
        f"{cp.max_position_span_used:7d} {cp.metadata_bytes:10d} {base} {codec_base}"
    )


def plot(result: StreamBenchResult, path: str) -> None:
    """A PNG with encode time per frame, time to first token and bytes per tier against stream length."""
    try:
        import matplotlib
    except ImportError as e:
        from ..errors import ConfigError

        raise ConfigError("--plot needs matplotlib: pip install 'streamvlm[bench]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cps = result.checkpoints
    x = [c.frames for c in cps]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].plot(x, [c.encode_ms_per_frame for c in cps], "o-")
    axes[0].set(title="encode time per frame", xlabel="stream length (frames)", ylabel="ms", ylim=(0, None))
    axes[1].plot(x, [c.ttft_s for c in cps], "o-", label="streamvlm (retrieval)")
    base = [(c.frames, c.baseline_ttft_s) for c in cps if c.baseline_ttft_s is not None]
    if base:
        axes[1].plot(*zip(*base, strict=True), "s--", label="transformers generate() over all frames")
    axes[1].set(title="time to first token", xlabel="stream length (frames)", ylabel="s", yscale="log")
    axes[1].legend()
    for tier in ("device", "host", "disk"):
        axes[2].plot(x, [c.bytes_per_tier[tier] / 2**20 for c in cps], "o-", label=tier)
    axes[2].set(
        title="resident KV bytes per tier", xlabel="stream length (frames)", ylabel="MiB", yscale="log"
    )
    axes[2].legend()
    fig.suptitle(f"streamvlm bench stream — {result.config['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
