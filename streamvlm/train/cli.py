"""``streamvlm train-tiny``: train the tiny Qwen2.5-VL-architecture model on the synthetic world.

The parser is built at CLI start-up: this module imports torch and transformers only when
the command runs (``train.config`` is plain Python).
"""

from __future__ import annotations

import argparse
import math

from ..cli_options import add_verbose_option, check_existing_directory, check_output_directory
from ..config import QUERY_CONTEXTS
from ..errors import ConfigError
from .config import TrainConfig


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``train-tiny`` to the CLI's subcommands; returns its parser."""
    d = TrainConfig()
    t = subparsers.add_parser(
        "train-tiny",
        help="train the tiny Qwen2.5-VL-architecture model on the synthetic world",
        description=(
            "Train a ~2M-parameter Qwen2.5-VL (real transformers class) on clips of the synthetic "
            "world laid out as streamvlm streams them, log loss and held-out accuracy, and save a "
            "checkpoint that StreamVLM.from_pretrained(OUT) loads."
        ),
    )
    t.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory")
    t.add_argument("--steps", type=int, default=d.steps)
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument(
        "--vision-steps",
        type=int,
        default=d.vision_steps,
        help=f"steps pre-training the vision tower alone on objects, before the questions (default: {d.vision_steps})",
    )
    t.add_argument(
        "--minutes", type=float, default=d.time_budget_s / 60, help="stop and save after this long"
    )
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument(
        "--init",
        metavar="DIR",
        help="continue from this checkpoint (a train-tiny output) instead of a fresh model",
    )
    t.add_argument(
        "--curriculum",
        choices=("base", "long", "finetune", "late", "count"),
        default=d.curriculum,
        help="base: from scratch, 4-16 frames; long: continue (with --init) on 4-24 frames, "
        "up to 5 objects, time jumps between blocks; finetune: continue on the base task's "
        "last stage; late: the same, half the clips starting up to an hour into the stream; "
        "count: late with counting questions three times as often "
        f"(default: {d.curriculum})",
    )
    t.add_argument(
        "--retrieval-loss-weight",
        type=float,
        default=d.retrieval_loss_weight,
        help="weight of the auxiliary loss that trains question queries and block keys to "
        f"retrieve the block a question is about (docs/training.md; default: {d.retrieval_loss_weight:g}, off)",
    )
    t.add_argument(
        "--retrieval-query-context",
        choices=QUERY_CONTEXTS,
        default=d.retrieval_query_context,
        help="what the retrieval loss reads the question over: the sink alone (as MemoryConfig("
        f"query_context='sink') retrieves) or the whole clip (default: {d.retrieval_query_context})",
    )
    t.add_argument("--eval-every", type=int, default=d.eval_every)
    t.add_argument(
        "--eval-samples", type=int, default=d.eval_samples, help="held-out clips scored at each evaluation"
    )
    t.add_argument(
        "--save-dtype",
        choices=("float32", "float16"),
        default=d.save_dtype,
        help="dtype of the saved weights (float16 halves the checkpoint; training runs in float32)",
    )
    add_verbose_option(t)
    t.set_defaults(func=cmd_train_tiny)
    return t


def cmd_train_tiny(args: argparse.Namespace) -> int:
    """Run ``streamvlm train-tiny``; raises ``ConfigError`` for options that cannot work."""
    if min(args.steps, args.batch_size, args.eval_every, args.eval_samples) < 1 or not (
        args.lr > 0 and args.minutes > 0
    ):
        raise ConfigError(
            "--steps, --batch-size, --lr, --minutes, --eval-every and --eval-samples must be positive"
        )
    if args.vision_steps < 0:
        raise ConfigError(f"--vision-steps must be 0 or more, got {args.vision_steps}")
    if not (math.isfinite(args.retrieval_loss_weight) and args.retrieval_loss_weight >= 0):
        raise ConfigError(f"--retrieval-loss-weight must be 0 or more, got {args.retrieval_loss_weight}")
    check_output_directory(args.out, "--out")
    if args.init is not None:
        check_existing_directory(args.init, "--init", "a checkpoint directory train-tiny wrote")
    from .loop import train  # torch and transformers: after the cheap checks
    from .synth_task import CURRICULA, OBJECT_CLASSES, VOCABULARY, synth_sample, vision_sample

    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        vision_steps=args.vision_steps,
        seed=args.seed,
        time_budget_s=60 * args.minutes,
        eval_every=args.eval_every,
        eval_samples=args.eval_samples,
        save_dtype=args.save_dtype,
        init=args.init,
        curriculum=args.curriculum,
        retrieval_loss_weight=args.retrieval_loss_weight,
        retrieval_query_context=args.retrieval_query_context,
    )
    curriculum = CURRICULA[args.curriculum]
    result = train(
        lambda rng, progress: synth_sample(rng, progress, curriculum),
        VOCABULARY,
        args.out,
        config,
        log=lambda line: print(line, flush=True),
        object_classes=OBJECT_CLASSES,
        make_view=vision_sample,
    )
    print(
        f"saved {args.out}: held-out accuracy {result['held_out_accuracy']:.3f} after "
        f"{result['vision_steps_run']} vision steps and {result['steps_run']} steps"
    )
    return 0
