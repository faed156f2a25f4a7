"""Training options (no torch import: the CLI reads the defaults at start-up)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    steps: int = 4000
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    time_budget_s: float = 45 * 60  # stop (and save) when the next step would pass this
    eval_every: int = 250
    eval_samples: int = 256
    log_every: int = 25
    object_loss_weight: float = 1.0  # weight of the auxiliary object loss (ObjectProbe)
    # weight of the auxiliary retrieval loss (train.retrieval.RetrievalLoss); 0 = off
    retrieval_loss_weight: float = 0.0
    # what the retrieval loss reads the question over: "sink" (the question alone, as a
    # session with MemoryConfig(query_context="sink")) or "window" (the whole clip)
    retrieval_query_context: str = "sink"
    vision_steps: int = 800  # steps pre-training the vision tower alone on the object loss
    vision_batch_size: int = 64  # views (2 frames, one object) per vision step
    save_dtype: str = "float32"  # float16 halves the shipped checkpoint
    hidden: int = 128
    # Warm start: a checkpoint directory to continue from (its tokenizer and weights;
    # hidden and layers then come from it). None trains from scratch.
    init: str | None = None
    curriculum: str = "base"  # a name in train.synth_task.CURRICULA
    layers: int = 4
