"""``streamvlm train-tiny``'s loop: samples drawn on the fly, AdamW, held-out accuracy, HF checkpoint."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Qwen2_5_VLForConditionalGeneration

from ..errors import ConfigError
from ..models.preprocessing import qwen_preprocess_for
from ..models.qwen2_5_vl import Qwen25VLBackend
from ..runtime.session import DEFAULT_SYSTEM_PROMPT
from .batches import IGNORE, ObjectLabels, Sample, collate, collate_objects, encode_sample, pop_object_targets
from .config import TrainConfig
from .model import PROCESSOR_CONFIG, VIDEO_PROCESSOR_CONFIG, trained_tiny_config
from .retrieval import RetrievalLoss
from .tokenizer import build_word_tokenizer, words_of


def build_trainee(vocabulary: Iterable[str], config: TrainConfig, seed: int):
    """A fresh model (or, with ``config.init``, the checkpoint there in float32), its word
    tokenizer and a backend that preprocesses like the checkpoint will."""
    if config.init:
        return load_trainee(config.init, vocabulary)
    # the chat role names and the default system prompt are in every prompt: give them words
    tokenizer = build_word_tokenizer(
        set(vocabulary) | words_of([DEFAULT_SYSTEM_PROMPT, "system user assistant"])
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(
            trained_tiny_config(tokenizer, config.hidden, config.layers)
        )
    preprocess = qwen_preprocess_for(model.config, PROCESSOR_CONFIG, VIDEO_PROCESSOR_CONFIG)
    return Qwen25VLBackend(model, tokenizer, "trainee", preprocess)


def load_trainee(path: str | Path, vocabulary: Iterable[str]) -> Qwen25VLBackend:
    """A trained checkpoint to continue training, in float32 on the CPU.

    Raises:
        ConfigError: ``path`` is not a Qwen2.5-VL checkpoint, or its tokenizer lacks
            words of ``vocabulary`` (it was trained on another world).
    """
    from ..models.loading import load_backend

    if not (Path(path) / "config.json").is_file():
        raise ConfigError(
            f"--init {path}: no checkpoint there (config.json missing); pass a train-tiny output directory"
        )
    backend = load_backend(str(path), device="cpu", dtype="float32")
    if not isinstance(backend, Qwen25VLBackend):
        raise ConfigError(
            f"--init {path}: not a Qwen2.5-VL checkpoint; train-tiny continues only its own models"
        )
    known = backend.tokenizer.get_vocab()
    missing = sorted(w for w in words_of(vocabulary) if w not in known)
    if missing:
        raise ConfigError(
            f"--init {path}: its tokenizer lacks {missing[:5]}; it was trained on another vocabulary"
        )
    backend.model.train()
    return backend


def accuracy(backend: Qwen25VLBackend, samples: list[Sample], batch_size: int = 32) -> float:
    """Share of samples whose every answer token (and the end of turn) is the argmax.

    With the answer given as prefix, per-token argmax equals greedy decoding, so this is
    the exact-match accuracy of greedy answers, computed in one forward per batch.
    """
    model, pad = backend.model, backend.tokenizer.pad_token_id
    model.eval()
    right = 0
    with torch.inference_mode():
        for i in range(0, len(samples), batch_size):
            batch = collate(
                [encode_sample(backend, DEFAULT_SYSTEM_PROMPT, s) for s in samples[i : i + batch_size]], pad
            )
            labels = batch.pop("labels")
            pop_object_targets(batch)
            logits = model(**batch).logits
            predicted = logits[:, :-1].argmax(-1)
            target = labels[:, 1:]
            scored = target != IGNORE
            right += int(((predicted == target) | ~scored).all(dim=1).sum())
    model.train()
    return right / len(samples)


class ObjectProbe(torch.nn.Module):
    """Auxiliary linear heads on the vision tower's merged tokens, used only in training.

    The answer loss reaches the vision tower only through the LLM's attention to a few of
    many visual tokens: colour, linear in the pixels, is learned that way, shape and digit
    are not (docs/training.md). The probe classifies each object's attributes from the
    mean of the tokens it covers. Per object, not per token: a token inside a 56-px object
    sees only its fill, so its shape can only come from the object's edge tokens, and a
    per-token loss stayed at chance where the pooled one learns. The heads are not saved.
    """

    def __init__(self, visual: torch.nn.Module, hidden: int, classes: Sequence[int]):
        super().__init__()
        self.classes = list(classes)
        self.heads = torch.nn.Linear(hidden, sum(self.classes))
        self._tokens: torch.Tensor | None = None
        visual.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output) -> None:
        self._tokens = output.pooler_output  # merged tokens of the batch, in output order

    def logits(self, object_of_token: torch.Tensor, n_objects: int) -> list[torch.Tensor]:
        """Per attribute, ``[objects, classes]`` logits from the tokens of the last forward."""
        tokens, self._tokens = self._tokens.float(), None
        shown = object_of_token >= 0
        index = object_of_token[shown]
        sums = tokens.new_zeros(n_objects, tokens.shape[-1]).index_add_(0, index, tokens[shown])
        counts = torch.bincount(index, minlength=n_objects).clamp(min=1).unsqueeze(-1)
        return list(self.heads(sums / counts).split(self.classes, dim=-1))

    def loss(self, object_of_token: torch.Tensor, object_classes: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over attributes and objects (0 when no object is shown)."""
        if len(object_classes) == 0:
            self._tokens = None
            return torch.zeros(())
        logits = self.logits(object_of_token, len(object_classes))
        return sum(F.cross_entropy(lg, object_classes[:, i]) for i, lg in enumerate(logits)) / len(logits)


@contextmanager
def linear_patch_embedding(model: Qwen2_5_VLForConditionalGeneration) -> Iterator[None]:
    """Run the vision tower's patch embedding as the matrix product it is, for training.

    The Conv3d's kernel equals its stride and it has no bias, so it is exactly a linear map
    of each flattened patch; on CPU its backward is a fifth of a training step, the
    linear's a small part of that. The weights (and so the checkpoint) do not change.
    """
    embed = model.model.visual.patch_embed
    weight = embed.proj.weight

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        return F.linear(pixels.reshape(-1, weight[0].numel()).to(weight.dtype), weight.flatten(1))

    embed.forward = forward
    try:
        yield
    finally:
        del embed.forward


def pretrain_vision(
    backend: Qwen25VLBackend,
    probe: ObjectProbe,
    make_view: Callable[[np.random.Generator], tuple[list[np.ndarray], ObjectLabels]],
    config: TrainConfig,
    rng: np.random.Generator,
    deadline: float,
    log: Callable[[str], None] = print,
) -> int:
    """Train the vision tower alone on the object probe for ``config.vision_steps`` steps
    of ``config.vision_batch_size`` views; returns the steps run.

    Seeing shapes and digits is what the tiny model learns slowest, and it needs neither
    questions nor the LLM: short views (one temporal patch each) give a fresh object per
    two frames, where a 16-frame clip shows the same few objects again and again. Stops
    early when the next step would end after ``deadline`` (a ``time.perf_counter()``).
    """
    visual = backend.model.model.visual
    params = list(visual.parameters()) + list(probe.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(config.warmup, config.vision_steps)
    )
    started = time.perf_counter()
    step = 0
    for step in range(config.vision_steps):
        step_started = time.perf_counter()
        views = [make_view(rng) for _ in range(config.vision_batch_size)]
        inputs = [backend.preprocess(frames) for frames, _ in views]
        targets = collate_objects([labels for _, labels in views])
        visual(torch.cat([px for px, _ in inputs]), grid_thw=torch.tensor([grid for _, grid in inputs]))
        loss = probe.loss(targets["object_of_token"], targets["object_classes"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        if step % config.log_every == 0:
            log(
                f"vision step {step:5d}  object loss {loss.item():.4f}  {time.perf_counter() - started:6.0f}s"
            )
        if time.perf_counter() + (time.perf_counter() - step_started) > deadline:
            log(f"time budget reached after {step + 1} vision steps")
            break
    return step + 1


def _warmup_cosine(warmup: int, steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine to 0 at ``steps``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train(
    make_sample: Callable[[np.random.Generator, float], Sample],
    vocabulary: Iterable[str],
    out_dir: str | Path,
    config: TrainConfig | None = None,
    log: Callable[[str], None] = print,
    object_classes: Sequence[int] | None = None,
    make_view: Callable[[np.random.Generator], tuple[list[np.ndarray], ObjectLabels]] | None = None,
) -> dict:
    """Train, evaluate on held-out samples, save the checkpoint to ``out_dir``.

    ``make_sample(rng, progress)`` draws one example; ``progress`` (share of the steps
    done, 0..1) lets it follow a curriculum. Held-out samples are drawn with progress 1
    from generators seeded apart from training's. With ``object_classes`` (classes per
    attribute) an ``ObjectProbe`` loss, weighted by ``config.object_loss_weight``, is
    added to the answer loss of samples carrying object labels, and with ``make_view``
    too the vision tower is first pre-trained alone (``pretrain_vision``). The time
    budget covers both stages.
    """
    config = config or TrainConfig()
    out = Path(out_dir)
    backend = build_trainee(vocabulary, config, config.seed)
    model = backend.model
    log(f"parameters: {sum(p.numel() for p in model.parameters()):,}; vocabulary: {len(backend.tokenizer)}")
    rng = np.random.default_rng(config.seed)
    held_out = [
        make_sample(np.random.default_rng([config.seed, 1, i]), 1.0) for i in range(config.eval_samples)
    ]
    started = time.perf_counter()
    deadline = started + config.time_budget_s
    probe = None
    params = list(model.parameters())
    vision_steps = 0
    with linear_patch_embedding(model):
        if object_classes:
            probe = ObjectProbe(
                model.model.visual, model.config.vision_config.out_hidden_size, object_classes
            )
            params += list(probe.parameters())
            if make_view is not None and config.vision_steps > 0:
                vision_steps = pretrain_vision(backend, probe, make_view, config, rng, deadline, log)
        run = _train_answers(backend, probe, make_sample, config, rng, params, held_out, deadline, log)
    elapsed = time.perf_counter() - started
    final = accuracy(backend, held_out)
    save(
        backend,
        out,
        {
            "config": asdict(config),
            "vision_steps_run": vision_steps,
            "steps_run": run.steps_run,
            "elapsed_s": elapsed,
            "held_out_accuracy": final,
            "history": run.history,
        },
        dtype=getattr(torch, config.save_dtype),
    )
    return {
        "held_out_accuracy": final,
        "vision_steps_run": vision_steps,
        "steps_run": run.steps_run,
        "history": run.history,
    }


@dataclass
class _Run:
    steps_run: int
    history: list[dict]


def _train_answers(
    backend: Qwen25VLBackend,
    probe: ObjectProbe | None,
    make_sample: Callable[[np.random.Generator, float], Sample],
    config: TrainConfig,
    rng: np.random.Generator,
    params: list[torch.nn.Parameter],
    held_out: list[Sample],
    deadline: float,
    log: Callable[[str], None],
) -> _Run:
    """The main stage: the whole model on questions (plus the object loss with a probe, and
    the retrieval loss when ``config.retrieval_loss_weight`` is set)."""
    model, pad = backend.model, backend.tokenizer.pad_token_id
    retrieval = None
    if config.retrieval_loss_weight > 0:
        retrieval = RetrievalLoss(model, config.retrieval_query_context)
        params = [*params, *retrieval.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(config.warmup, config.steps))
    history: list[dict] = []
    started = time.perf_counter()
    model.train()
    step = 0
    for step in range(config.steps):
        step_started = time.perf_counter()
        batch = collate(
            [
                encode_sample(backend, DEFAULT_SYSTEM_PROMPT, make_sample(rng, step / config.steps))
                for _ in range(config.batch_size)
            ],
            pad,
        )
        objects = pop_object_targets(batch)
        loss = answer_loss = model(**batch).loss
        extra = ""
        if probe is not None and objects is not None:
            loss = answer_loss + config.object_loss_weight * probe.loss(*objects[:2])
        if retrieval is not None and objects is not None:
            found = retrieval.loss(batch, *objects)
            if found is not None:
                loss = loss + config.retrieval_loss_weight * found
                extra = f"  retrieval {found.item():.3f}"
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        elapsed = time.perf_counter() - started
        if step % config.log_every == 0:
            log(
                f"step {step:5d}  loss {answer_loss.item():.4f}  total {loss.item():.4f}{extra}  lr {scheduler.get_last_lr()[0]:.2e}  {elapsed:6.0f}s"
            )
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            acc = accuracy(backend, held_out)
            history.append(
                {"step": step + 1, "loss": answer_loss.item(), "held_out_accuracy": acc, "elapsed_s": elapsed}
            )
            log(f"step {step + 1:5d}  held-out accuracy {acc:.3f}")
        if time.perf_counter() + (time.perf_counter() - step_started) > deadline:
            log(f"time budget reached after {step + 1} steps")
            break
    return _Run(step + 1, history)


def save(backend: Qwen25VLBackend, out: Path, log: dict, dtype: torch.dtype = torch.float32) -> None:
    """A checkpoint ``StreamVLM.from_pretrained(out)`` loads: weights (in ``dtype``), tokenizer,
    processor configs, training log. The model in ``backend`` is left in float32."""
    out.mkdir(parents=True, exist_ok=True)
    backend.model.eval().to(dtype).save_pretrained(out)
    backend.model.float()
    backend.tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(PROCESSOR_CONFIG, indent=2))
    (out / "video_preprocessor_config.json").write_text(json.dumps(VIDEO_PROCESSOR_CONFIG, indent=2))
    (out / "training_log.json").write_text(json.dumps(log, indent=2))
