"""``streamvlm train-tiny``'s loop: samples drawn on the fly, AdamW, held-out accuracy, HF checkpoint."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from ..models.preprocessing import qwen_preprocess_for
from ..models.qwen2_5_vl import Qwen25VLBackend
from ..runtime.session import DEFAULT_SYSTEM_PROMPT
from .batches import IGNORE, Sample, collate, encode_sample
from .config import TrainConfig
from .model import PROCESSOR_CONFIG, VIDEO_PROCESSOR_CONFIG, trained_tiny_config
from .tokenizer import build_word_tokenizer, words_of


def build_trainee(vocabulary: Iterable[str], config: TrainConfig, seed: int):
    """A fresh model, its word tokenizer and a backend that preprocesses like the checkpoint will."""
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
            batch.pop("token_labels", None)
            logits = model(**batch).logits
            predicted = logits[:, :-1].argmax(-1)
            target = labels[:, 1:]
            scored = target != IGNORE
            right += int(((predicted == target) | ~scored).all(dim=1).sum())
    model.train()
    return right / len(samples)


class TokenProbe(torch.nn.Module):
    """Auxiliary linear heads on the vision tower's merged tokens, used only in training.

    The answer loss reaches the vision tower only through the LLM's attention to a few
    of many visual tokens; colour is linear in the pixels and is learned that way, but
    shape and digit features are not (a ViT from scratch stayed at chance for 400 steps,
    docs/training.md). Classifying each merged token's attributes directly gives the
    tower a dense signal. The heads are dropped when the checkpoint is saved.
    """

    def __init__(
        self, visual: torch.nn.Module, hidden: int, classes: Sequence[int], background_weight: float = 1.0
    ):
        super().__init__()
        self.classes = list(classes)
        # Most tokens show no object: class 0 is learned at once and then dominates the loss.
        self.weights = [torch.tensor([background_weight] + [1.0] * (n - 1)) for n in self.classes]
        self.heads = torch.nn.Linear(hidden, sum(self.classes))
        self._tokens: torch.Tensor | None = None
        visual.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output) -> None:
        self._tokens = output.pooler_output  # merged tokens of the batch, in output order

    def loss(self, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over attributes for the tokens of the last forward."""
        logits = self.heads(self._tokens.float()).split(self.classes, dim=-1)
        self._tokens = None
        return sum(torch.nn.functional.cross_entropy(lg, labels[:, i]) for i, lg in enumerate(logits)) / len(
            logits
        )


def train(
    make_sample: Callable[[np.random.Generator, float], Sample],
    vocabulary: Iterable[str],
    out_dir: str | Path,
    config: TrainConfig | None = None,
    log: Callable[[str], None] = print,
    token_classes: Sequence[int] | None = None,
) -> dict:
    """Train, evaluate on held-out samples, save the checkpoint to ``out_dir``.

    ``make_sample(rng, progress)`` draws one example; ``progress`` (share of the steps
    done, 0..1) lets it follow a curriculum. Held-out samples are drawn with progress 1
    from generators seeded apart from training's. With ``token_classes`` (classes per
    attribute) and samples carrying ``token_labels``, a ``TokenProbe`` loss weighted by
    ``config.token_loss_weight`` is added to the answer loss.
    """
    config = config or TrainConfig()
    out = Path(out_dir)
    backend = build_trainee(vocabulary, config, config.seed)
    model, pad = backend.model, backend.tokenizer.pad_token_id
    log(f"parameters: {sum(p.numel() for p in model.parameters()):,}; vocabulary: {len(backend.tokenizer)}")
    rng = np.random.default_rng(config.seed)
    held_out = [
        make_sample(np.random.default_rng([config.seed, 1, i]), 1.0) for i in range(config.eval_samples)
    ]
    probe = None
    params = list(model.parameters())
    if token_classes:
        probe = TokenProbe(
            model.model.visual,
            model.config.vision_config.out_hidden_size,
            token_classes,
            config.token_background_weight,
        )
        params += list(probe.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def lr_at(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        progress = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
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
        token_labels = batch.pop("token_labels", None)
        loss = answer_loss = model(**batch).loss
        if probe is not None and token_labels is not None:
            loss = answer_loss + config.token_loss_weight * probe.loss(token_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        elapsed = time.perf_counter() - started
        if step % config.log_every == 0:
            log(
                f"step {step:5d}  loss {answer_loss.item():.4f}  total {loss.item():.4f}  lr {scheduler.get_last_lr()[0]:.2e}  {elapsed:6.0f}s"
            )
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            acc = accuracy(backend, held_out)
            history.append(
                {"step": step + 1, "loss": answer_loss.item(), "held_out_accuracy": acc, "elapsed_s": elapsed}
            )
            log(f"step {step + 1:5d}  held-out accuracy {acc:.3f}")
        if elapsed + (time.perf_counter() - step_started) > config.time_budget_s:
            log(f"time budget reached after {step + 1} steps")
            break
    final = accuracy(backend, held_out)
    save(
        backend,
        out,
        {"config": asdict(config), "steps_run": step + 1, "held_out_accuracy": final, "history": history},
        dtype=getattr(torch, config.save_dtype),
    )
    return {"held_out_accuracy": final, "steps_run": step + 1, "history": history}


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
