"""``streamvlm bench stream|quant|serve|geometry|gpu``: benchmarks against a baseline in the same run.

The parser is built at CLI start-up: the benchmark modules are imported for their
config dataclasses only (plain Python); torch loads when a benchmark runs.
"""

from __future__ import annotations

import argparse
import math

from ..cli_options import (
    add_json_option,
    add_max_new_tokens_option,
    add_memory_options,
    add_model_options,
    add_plot_option,
    add_verbose_option,
    block_codec_name,
    check_input_file,
    check_model_options,
    line_printer,
    parse_lengths,
    positive_int,
    write_results,
)
from ..config import MemoryConfig
from ..errors import ConfigError
from ..models.catalog import check_model_name
from ..runtime.questions import validate_question
from ..runtime.scheduling import DEVICE_LOCKS
from .cluster import ClusterBenchConfig
from .geometry import GeometryBenchConfig
from .gpu import GpuBenchConfig
from .quant import QuantBenchConfig
from .serve import ServeBenchConfig
from .stream import StreamBenchConfig


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``bench`` (with ``stream``, ``quant``, ``serve``, ``geometry`` and ``gpu``) to the CLI's
    subcommands; returns its parser."""
    b = subparsers.add_parser("bench", help="benchmarks against a baseline in the same run")
    benches = b.add_subparsers(dest="bench", metavar="BENCH", parser_class=type(b))
    benches.required = True
    _add_stream(benches)
    _add_quant(benches)
    _add_serve(benches)
    _add_geometry(benches)
    _add_gpu(benches)
    return b


def _add_stream(benches) -> None:
    d = StreamBenchConfig()
    s = benches.add_parser(
        "stream",
        help="cost per frame, time to first token and memory against stream length",
        description=(
            "Stream a synthetic video of growing length through one session (retrieval on, "
            "tiers with small budgets) and, at each checkpoint length, ask a question; in the same "
            "run, answer it with plain transformers generate() over every frame so far until that "
            "passes a time or memory cap. Prints a table (or --json) and the ratios the targets use."
        ),
    )
    add_model_options(s, model=d.model, loading=False)
    s.add_argument(
        "--lengths",
        default=",".join(map(str, d.lengths)),
        help=f"checkpoint lengths in sampled frames (default: {','.join(map(str, d.lengths))})",
    )
    s.add_argument("--fps", type=float, default=d.fps, help="stream time between frames is 1/fps")
    s.add_argument("--size", type=int, default=d.size, help="frame side in pixels")
    add_memory_options(
        s,
        *("window", "top_k", "device_bytes", "host_bytes", "answer_tokens", "max_position_span"),
        *("host_codec", "disk_codec"),
        window=d.window,
        top_k=d.top_k,
        device_bytes=d.device_bytes,
        host_bytes=d.host_bytes,
    )
    s.add_argument(
        "--codec-baseline",
        type=block_codec_name,
        metavar="CODEC",
        help="also stream every frame, alternating, into a second session with host and disk "
        "at CODEC (e.g. identity), and report encode time per frame and TTFT over it: what "
        "the tiers' codecs cost",
    )
    s.add_argument("--question", default=d.question)
    s.add_argument(
        "--questions",
        type=int,
        default=d.questions,
        help="asks per checkpoint; TTFT and load time are their medians (default: %(default)s)",
    )
    s.add_argument("--baseline-cap-s", type=float, default=d.baseline_cap_s)
    add_json_option(s)
    add_plot_option(s)
    s.set_defaults(func=cmd_bench_stream)


def cmd_bench_stream(args: argparse.Namespace) -> int:
    """Run ``streamvlm bench stream``."""
    from .stream import HEADER, plot, run_stream_bench

    lengths = parse_lengths(args.lengths, 2, "100,300,1000")
    check_model_options(args)
    if args.questions < 1:
        raise ConfigError(f"--questions must be >= 1, got {args.questions}")
    config = StreamBenchConfig(
        model=args.model,
        lengths=lengths,
        fps=args.fps,
        size=args.size,
        window=args.window,
        top_k=args.top_k,
        device_bytes=args.device_bytes,
        host_bytes=args.host_bytes,
        answer_tokens=args.answer_tokens,
        max_position_span=args.max_position_span,
        question=validate_question(args.question, MemoryConfig.max_question_chars),
        questions=args.questions,
        baseline_cap_s=args.baseline_cap_s,
        device=args.device,
        dtype=args.dtype,
        host_codec=args.host_codec,
        disk_codec=args.disk_codec,
        codec_baseline=args.codec_baseline,
    )
    log = line_printer(args.json)
    log(HEADER)
    result = run_stream_bench(config, log=log)
    if write_results(args, result, plot):
        return 0
    print(f"baseline: {result.baseline_stopped or 'ran at every length'}")
    for name, value in result.ratios().items():
        print(f"{name}: {_format_ratio(value)}")
    return 0


def _format_ratio(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list) and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.3f}" for v in value) + "]"
    return str(value)


def _add_quant(benches) -> None:
    d = QuantBenchConfig()
    q = benches.add_parser(
        "quant",
        help="every KV codec on the same tensors: bits, errors, throughput; needle accuracy per storage",
        description=(
            "For each KV set (synthetic with outlier channels, and the KV of tiny models over a "
            "synthetic-world video with their real queries) and each codec: stored bits per element "
            "with metadata, K/V relative error, attention-output error and attention-weight TV "
            "distance, encode/decode GB/s next to a plain copy. Then needle accuracy of the trained "
            "model with every codec and with pruning, against lossless storage, in the same run."
        ),
    )
    q.add_argument("--codecs", default=",".join(d.codecs), help=f"(default: {','.join(d.codecs)})")
    q.add_argument("--kv-sets", default=",".join(d.kv_sets), help=f"(default: {','.join(d.kv_sets)})")
    q.add_argument(
        "--frames", type=int, default=d.frames, help="video frames streamed to capture a model's KV"
    )
    q.add_argument(
        "--repeats", type=int, default=d.repeats, help="timing repeats (throughput: the fastest run)"
    )
    q.add_argument(
        "--needle-lengths",
        default=",".join(map(str, d.needle_lengths)),
        help="stream lengths of the needle part; 'none' skips it (default: %(default)s)",
    )
    q.add_argument(
        "--clips",
        type=int,
        default=d.clip_samples,
        help="held-out clips answered per storage; 0 skips (default: %(default)s)",
    )
    q.add_argument("--needle-streams", type=int, default=d.needle_streams)
    q.add_argument("--needle-min-questions", type=int, default=d.needle_min_questions)
    q.add_argument("--seed", type=int, default=d.seed)
    add_model_options(q, model=None, loading=False)  # the models are among --kv-sets
    add_json_option(q)
    add_plot_option(q)
    q.set_defaults(func=cmd_bench_quant)


def cmd_bench_quant(args: argparse.Namespace) -> int:
    """Run ``streamvlm bench quant``; unknown codecs and bad lengths fail before any work."""
    from ..eval.needle import MIN_LENGTH
    from ..registry import KV_CODECS
    from .quant import plot, run_quant_bench

    names = [c.strip() for c in args.codecs.split(",") if c.strip()]
    if not names or any(c not in KV_CODECS for c in names):
        raise ConfigError(f"--codecs takes names among {', '.join(KV_CODECS.names())}; got {args.codecs!r}")
    codecs = tuple(KV_CODECS.canonical(c) for c in names)  # old names (vidkv-ref) read as today's
    kv_sets = tuple(k.strip() for k in args.kv_sets.split(",") if k.strip())
    if not kv_sets:
        raise ConfigError("--kv-sets needs at least one of: synthetic, a model name or path")
    for kv_set in kv_sets:
        if kv_set != "synthetic":
            check_model_name(kv_set)
    needle = () if args.needle_lengths.strip().lower() in ("none", "") else None
    if needle is None:
        needle = parse_lengths(args.needle_lengths, MIN_LENGTH, "256", "--needle-lengths")
    if min(args.frames, args.repeats, args.needle_streams) < 1 or args.needle_min_questions < 0:
        raise ConfigError(
            "--frames, --repeats and --needle-streams must be >= 1, --needle-min-questions >= 0"
        )
    config = QuantBenchConfig(
        codecs=codecs,
        kv_sets=kv_sets,
        frames=args.frames,
        repeats=args.repeats,
        needle_lengths=needle,
        needle_streams=args.needle_streams,
        needle_min_questions=args.needle_min_questions,
        clip_samples=args.clips,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
    )
    write_results(args, run_quant_bench(config, log=line_printer(args.json)), plot)
    return 0


def _add_serve(benches) -> None:
    d, c = ServeBenchConfig(), ServeBenchConfig.for_capacity()
    s = benches.add_parser(
        "serve",
        help="frames/s, drops, answer latency and memory of a server under N streaming sessions",
        description=(
            "Start a server on a loopback port and, for each session count, stream synthetic frames "
            "from that many concurrent websocket clients in real time for --duration seconds while "
            "each asks a question every --question-every seconds. Prints a table (or --json): "
            "frames/s sent, accepted and encoded, dropped and rejected frames, p50/p99 answer "
            "latency and time to first token as a client sees them, memory per session per tier. "
            "--capacity ramps the session count (1, 2, 4, 6, ...) until a frame is dropped or the "
            "p99 answer latency passes --p99-limit, and reports the largest count within both."
        ),
    )
    # options whose default differs in capacity mode default to None here: "not given"
    s.add_argument(
        "--model",
        default=None,
        help=f"model name, path or hub id (default: {d.model}; with --capacity {c.model}, what "
        "streamvlm serve loads)",
    )
    add_model_options(s, model=None, loading=False)
    s.add_argument(
        "--sessions",
        default=None,
        help=f"comma-separated session counts, each run in turn (default: {','.join(map(str, d.sessions))})",
    )
    s.add_argument(
        "--duration", type=float, default=d.duration_s, metavar="SECONDS", help="per session count"
    )
    s.add_argument(
        "--fps",
        type=float,
        default=None,
        help=f"frames/s each session sends (default: {d.fps:g}; with --capacity {c.fps:g})",
    )
    s.add_argument("--size", type=int, default=d.size, help=f"frame side in pixels (default: {d.size})")
    s.add_argument("--question-every", type=float, default=d.question_every_s, metavar="SECONDS")
    add_max_new_tokens_option(s, default=d.max_new_tokens)
    s.add_argument(
        "--window",
        type=int,
        default=None,
        metavar="N",
        # the shared option's words (cli_options.py), with this command's two defaults
        help="frames of recent context each chunk attends to while encoding; 0 encodes each chunk over "
        f"the system prompt alone (default: {d.window}; with --capacity what the model recommends)",
    )
    add_memory_options(s, "device_bytes", "host_bytes", device_bytes=d.device_bytes, host_bytes=d.host_bytes)
    s.add_argument(
        "--lock",
        choices=tuple(DEVICE_LOCKS),
        default=d.lock,
        help="the device lock: priority (a question's work before waiting chunks) or fifo (first come, "
        f"first served, as before; to compare) (default: {d.lock})",
    )
    s.add_argument(
        "--capacity",
        action="store_true",
        help=f"ramp the session count until out of the limits (default model {c.model}, --fps {c.fps:g}, "
        "the model's recommended --window); JSON adds capacity_sessions",
    )
    s.add_argument(
        "--p99-limit",
        type=float,
        default=d.p99_limit_s,
        metavar="SECONDS",
        help=f"with --capacity: the largest p99 answer latency within the limits (default: {d.p99_limit_s:g})",
    )
    s.add_argument(
        "--max-sessions",
        type=positive_int,
        default=d.max_sessions,
        metavar="N",
        help=f"with --capacity: the last session count of the ramp (default: {d.max_sessions})",
    )
    cluster = s.add_argument_group(
        "a cluster on this machine (--ray; docs/deploy.md)",
        "A multi-node Ray cluster of this machine's processes, a redis-server and a shared store: one "
        "replica then --replicas, --sessions-per-replica each, the bundled world streamed and asked "
        "about; with --failover the node of the first session's replica is then killed mid-stream.",
    )
    cluster.add_argument("--ray", action="store_true", help="run the cluster benchmark instead")
    cluster.add_argument(
        "--replicas",
        type=positive_int,
        default=None,
        metavar="N",
        help="replicas of the last step (default: 2)",
    )
    cluster.add_argument(
        "--sessions-per-replica",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"sessions each replica serves (default: {ClusterBenchConfig.sessions_per_replica})",
    )
    cluster.add_argument(
        "--failover",
        action="store_true",
        help="kill a replica's node and report failover_s, frames_lost, blocks_lost, "
        "answers_correct_after_failover",
    )
    cluster.add_argument(
        "--store", default=None, metavar="URL", help="the shared store (default: a temporary directory)"
    )
    cluster.add_argument(
        "--registry",
        default=None,
        metavar="URL",
        help="the session directory (default: a redis-server started for the run)",
    )
    add_json_option(s)
    s.set_defaults(func=cmd_bench_serve)


def cmd_bench_serve(args: argparse.Namespace) -> int:
    """Run ``streamvlm bench serve``."""
    from .serve import HEADER, run_serve_bench

    if args.ray:
        return _bench_cluster(args)
    for name, flag in _CLUSTER_ONLY:
        if getattr(args, name) not in (None, False):
            raise ConfigError(f"{flag} needs --ray")

    if args.capacity and args.sessions is not None:
        raise ConfigError("--capacity picks the session counts itself; leave out --sessions or --capacity")
    for name in ("duration", "fps", "question_every", "p99_limit"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    if args.size < 16 or args.max_new_tokens < 1:
        raise ConfigError("--size must be >= 16 and --max-new-tokens >= 1")
    given = {
        "model": args.model,
        "sessions": parse_lengths(args.sessions, 1, "1,2,4", flag="--sessions") if args.sessions else None,
        "duration_s": args.duration,
        "fps": args.fps,
        "size": args.size,
        "question_every_s": args.question_every,
        "max_new_tokens": args.max_new_tokens,
        "window": args.window,
        "device_bytes": args.device_bytes,
        "host_bytes": args.host_bytes,
        "device": args.device,
        "dtype": args.dtype,
        "lock": args.lock,
        "p99_limit_s": args.p99_limit,
        "max_sessions": args.max_sessions,
    }
    given = {k: v for k, v in given.items() if v is not None}  # the rest: the mode's defaults
    config = ServeBenchConfig.for_capacity(**given) if args.capacity else ServeBenchConfig(**given)
    args.model = config.model
    check_model_options(args)
    log = line_printer(args.json)
    log(HEADER)
    result = run_serve_bench(config, log=log)
    if not write_results(args, result):
        print(f"machine: {', '.join(f'{k}={v}' for k, v in result.machine.items())}")
        if config.capacity:
            print(
                f"capacity: {result.capacity_sessions} sessions (p99 <= {config.p99_limit_s:g} s, none dropped)"
            )
    return 0


# options of ``bench serve`` that mean something only with --ray: (attribute, flag)
_CLUSTER_ONLY = (
    ("replicas", "--replicas"),
    ("sessions_per_replica", "--sessions-per-replica"),
    ("failover", "--failover"),
    ("store", "--store"),
    ("registry", "--registry"),
)


def _bench_cluster(args: argparse.Namespace) -> int:
    """``bench serve --ray``: one replica then ``--replicas``, and with ``--failover`` a kill."""
    from ..cluster.settings import ClusterSettings
    from .cluster import HEADER, run_cluster_bench

    for flag, given in (("--capacity", args.capacity), ("--sessions", args.sessions)):
        if given:
            raise ConfigError(f"{flag} is for one server; with --ray use --sessions-per-replica")
    if args.store is not None or args.registry is not None:  # checked as a replica would
        ClusterSettings(args.store or "file:///unused", args.registry or "redis://unused:0/0")
    given = {
        "model": args.model,
        "replicas": args.replicas,
        "sessions_per_replica": args.sessions_per_replica,
        "fps": args.fps,
        "question_every_s": args.question_every,
        "failover": args.failover,
        "store": args.store,
        "registry": args.registry,
        "device": args.device,
    }
    config = ClusterBenchConfig(**{k: v for k, v in given.items() if v is not None})
    args.model = config.model
    check_model_options(args)
    log = line_printer(args.json)
    log(HEADER)
    result = run_cluster_bench(config, log=log)
    if not write_results(args, result):
        failover = result.failover
        if failover:
            print(
                f"failover: {failover['sessions_moved']} session(s) moved in {failover['failover_s']:.2f} s, "
                f"{failover['frames_lost']} frame(s) and {failover['blocks_lost']} block(s) lost, "
                f"answers correct after: {failover['answers_correct_after_failover']}"
            )
    return 0


def _add_geometry(benches) -> None:
    d = GeometryBenchConfig()
    g = benches.add_parser(
        "geometry",
        help="tokens, KV bytes per codec and seconds per step of one frame at a released model's geometry",
        description=(
            "Stream 720p frames through a real-geometry model (geom-*: released per-layer sizes, 2 text "
            "layers) and report per frame, at the released model's depth: LLM tokens at the checkpoint's "
            "pixel budget and at the streaming default, stored bytes per frame and per video-hour at 1 fps "
            "for each codec (bfloat16, metadata included), the largest position span used, and seconds per "
            "step, each codec's encode/decode GB/s beside a copy of the same bytes."
        ),
    )
    g.add_argument(
        "--model", required=True, help="a real-geometry model, e.g. geom-qwen2.5-vl-7b (docs/models.md)"
    )
    g.add_argument(
        "--video",
        default=d.video,
        help="real footage, scaled to 1280x720 (default: streamvlm's synthetic scene)",
    )
    g.add_argument(
        "--frames",
        type=int,
        default=d.frames,
        help="frames streamed, 1 a second, in whole chunks (default: %(default)s)",
    )
    g.add_argument("--codecs", default=",".join(d.codecs), help="block codecs (default: %(default)s)")
    g.add_argument("--repeats", type=int, default=d.repeats, help="timing repeats (median)")
    add_model_options(g, model=None, loading=False)
    add_json_option(g)
    g.set_defaults(func=cmd_bench_geometry)


def cmd_bench_geometry(args: argparse.Namespace) -> int:
    """Run ``streamvlm bench geometry``; unknown codecs and bad counts fail before any work."""
    from ..registry import BLOCK_CODECS
    from .geometry import run_geometry_bench, summary_lines

    names = [c.strip() for c in args.codecs.split(",") if c.strip()]
    if not names or any(c not in BLOCK_CODECS for c in names):
        raise ConfigError(
            f"--codecs takes names among {', '.join(BLOCK_CODECS.names())}; got {args.codecs!r}"
        )
    if min(args.frames, args.repeats) < 1:
        raise ConfigError("--frames and --repeats must be >= 1")
    if args.video is not None:
        check_input_file(args.video)
    check_model_options(args)
    config = GeometryBenchConfig(
        model=args.model,
        video=args.video,
        frames=args.frames,
        codecs=tuple(dict.fromkeys(BLOCK_CODECS.canonical(c) for c in names)),
        repeats=args.repeats,
        device=args.device,
        dtype=args.dtype,
    )
    result = run_geometry_bench(config, log=line_printer(args.json))
    if not write_results(args, result):
        print("\n".join(summary_lines(result)))
    return 0


def _add_gpu(benches) -> None:
    from .gpu import CUDA_FRAMES, DRY_RUN_FRAMES, TARGET_FRAMES_PER_S

    d = GpuBenchConfig()
    g = benches.add_parser(
        "gpu",
        help="the GPU check: kernels bit for bit, frames/s, time split, TTFT and peak memory at 7B geometry",
        description=(
            "On CUDA, in bfloat16: the kivi2, kivi4 and vidkv kernels (and the packing kernels) against "
            "their references on one Qwen2.5-VL-7B layer's K and V, bit for bit; then each real-geometry "
            "model streams 720p footage at 1 fps with its recommended memory, after one chunk of warm-up: "
            "frames/s, time per frame of the first and last quarter, seconds per frame of each step "
            "(video decode, preprocess, vision tower, prefill and codec per layer, transfers), time to "
            "first token, peak device memory, and frames/s projected to the released depth against "
            f"{TARGET_FRAMES_PER_S:g}. Without CUDA (or with --dry-run) the same code runs on the CPU in "
            "float32 with small sizes, to check the command."
        ),
    )
    g.add_argument(
        "--models",
        default=",".join(d.models),
        help="real-geometry models, comma-separated; the first gives the top-level figures (default: %(default)s)",
    )
    g.add_argument(
        "--frames",
        type=int,
        default=None,
        help=f"frames measured per model after a chunk of warm-up, in whole chunks (default: {CUDA_FRAMES} on "
        f"CUDA, {DRY_RUN_FRAMES} in a dry run)",
    )
    g.add_argument(
        "--video",
        default=None,
        help="real footage, scaled to 1280x720 (default: the synthetic scene as a clip)",
    )
    g.add_argument(
        "--repeats", type=int, default=d.repeats, help="timing repeats (median; default: %(default)s)"
    )
    g.add_argument(
        "--device",
        default=None,
        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available, else cpu: a dry run)",
    )
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="run on the CPU in float32 with small sizes (automatic without CUDA)",
    )
    add_verbose_option(g)
    add_json_option(g)
    g.set_defaults(func=cmd_bench_gpu)


def cmd_bench_gpu(args: argparse.Namespace) -> int:
    """Run ``streamvlm bench gpu``; unknown models and bad counts fail before torch loads."""
    from ..models.catalog import GEOMETRY_MODELS
    from .gpu import run_gpu_bench, summary_lines

    models = tuple(dict.fromkeys(m.strip() for m in args.models.split(",") if m.strip()))
    if not models or any(m not in GEOMETRY_MODELS for m in models):
        raise ConfigError(f"--models takes names among {', '.join(GEOMETRY_MODELS)}; got {args.models!r}")
    if (args.frames is not None and args.frames < 1) or args.repeats < 1:
        raise ConfigError("--frames and --repeats must be >= 1")
    if args.dry_run and args.device is not None and not args.device.startswith("cpu"):
        raise ConfigError(f"--dry-run runs on the CPU; leave out --device {args.device} or --dry-run")
    if args.video is not None:
        check_input_file(args.video)
    check_model_options(args)
    config = GpuBenchConfig(
        models=models,
        frames=args.frames,
        video=args.video,
        repeats=args.repeats,
        device=args.device,
        dry_run=args.dry_run,
    )
    result = run_gpu_bench(config, log=line_printer(args.json))
    if not write_results(args, result):
        print("\n".join(summary_lines(result)))
    return 0
