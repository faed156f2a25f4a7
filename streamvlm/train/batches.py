"""Training examples laid out exactly as a streamvlm session lays out a stream and a question.

A session encodes the sink, then the video chunk by chunk at runtime-owned positions,
then the question after the largest position used; the exactness tests prove that equals
one plain forward over the same tokens and positions. So the model is trained with that
plain forward, on the same token layout and the same ``position_ids``, and learns the
convention it will be streamed with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..models.qwen2_5_vl import Qwen25VLBackend

IGNORE = -100  # label of tokens the loss skips


@dataclass(frozen=True)
class ObjectLabels:
    """Targets of the auxiliary object loss (``loop.ObjectProbe``): what the visual tokens show.

    An *instance* is one object on one temporal patch (2 frames). ``token_object`` maps each
    merged visual token, in the vision tower's output order, to the instance covering it
    (-1: none); ``classes`` holds one class id per attribute for each instance.
    """

    token_object: np.ndarray  # int, [visual tokens]
    classes: np.ndarray  # int, [instances, attributes]


@dataclass(frozen=True)
class Sample:
    """A clip and a question about it, with the expected answer, and optionally the
    objects its visual tokens show (targets of the auxiliary loss; see ``loop.train``)."""

    frames: Sequence[np.ndarray]
    times: Sequence[float]  # stream seconds of each frame (0: the stream's first frame)
    question: str
    answer: str
    objects: ObjectLabels | None = None
    # (attribute column of ``objects.classes``, class) the question names its object by,
    # e.g. (shape, circle) for "what colour was the circle?": target of the retrieval loss
    query_key: tuple[int, int] | None = None


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    positions: torch.Tensor  # [3, L]
    pixel_values: torch.Tensor  # [patches, C*T*P*P]
    grid: tuple[int, int, int]  # (t, h, w) in patches
    objects: ObjectLabels | None = None
    query_key: tuple[int, int] | None = None


def encode_sample(backend: Qwen25VLBackend, system_prompt: str, sample: Sample) -> Encoded:
    """Token ids, labels (answer + end of turn), positions and pixels of one sample."""
    # times are stream seconds from the stream's first frame: a clip that starts late sits
    # where a late window of a session's stream does, far from the sink
    frames, times = list(sample.frames), list(sample.times)
    while len(frames) % backend.frame_multiple:  # pad as the session does: repeat the last frame
        frames.append(frames[-1])
        times.append(times[-1])
    pixel_values, grid = backend.preprocess(frames)
    llm_grid = (grid[0], grid[1] // backend.merge_size, grid[2] // backend.merge_size)
    patch_times = [times[i * backend.temporal_patch_size] for i in range(grid[0])]
    sink = backend.prompt_parts(system_prompt).sink
    video_positions = backend.chunk_positions(llm_grid, patch_times, video_start=len(sink))
    question = backend.prompt_parts(system_prompt, sample.question).question
    answer = backend.tokenizer(sample.answer, add_special_tokens=False)["input_ids"] + [
        backend.tokenizer.convert_tokens_to_ids("<|im_end|>")
    ]
    n_visual = video_positions.shape[1]
    next_position = max(len(sink), int(video_positions.max()) + 1)
    ids = sink + [backend.model.config.video_token_id] * n_visual + question + answer
    positions = torch.cat(
        [
            backend.text_positions(0, len(sink)),
            video_positions,
            backend.text_positions(next_position, len(question) + len(answer)),
        ],
        dim=1,
    )
    labels = [IGNORE] * (len(ids) - len(answer)) + answer
    if sample.objects is not None and len(sample.objects.token_object) != n_visual:
        raise ValueError(
            f"object labels cover {len(sample.objects.token_object)} tokens, the clip has {n_visual}"
        )
    return Encoded(ids, labels, positions, pixel_values, grid, sample.objects, sample.query_key)


def collate(items: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded model inputs for a batch (``position_ids`` as [3, batch, length]).

    With object labels on every item, ``object_of_token`` and ``object_classes`` hold them
    for the whole batch (see ``collate_objects``) and ``query_keys`` [batch, 2] the items'
    ``query_key`` ((-1, -1) for none); ``pop_object_targets`` takes them out before the
    batch goes to the model.
    """
    length = max(len(e.input_ids) for e in items)
    batch = len(items)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE, dtype=torch.long)
    mask = torch.zeros((batch, length), dtype=torch.long)
    positions = torch.zeros((3, batch, length), dtype=torch.long)
    for row, e in enumerate(items):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
        positions[:, row, :n] = e.positions
    extra = {}
    if all(e.objects is not None for e in items):
        extra = collate_objects([e.objects for e in items])
        extra["query_keys"] = torch.tensor([e.query_key or (-1, -1) for e in items], dtype=torch.long)
    return {
        **extra,
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": mask,
        "position_ids": positions,
        "pixel_values_videos": torch.cat([e.pixel_values for e in items]),
        "video_grid_thw": torch.tensor([e.grid for e in items]),
    }


def collate_objects(labels: Sequence[ObjectLabels]) -> dict[str, torch.Tensor]:
    """The object labels of several clips as one batch: instance ids are renumbered so
    they are unique across the batch, tokens concatenated in the vision tower's order."""
    token_object, classes, offset = [], [], 0
    for lab in labels:
        ids = torch.as_tensor(lab.token_object, dtype=torch.long)
        token_object.append(torch.where(ids >= 0, ids + offset, ids))
        classes.append(torch.as_tensor(lab.classes, dtype=torch.long).reshape(len(lab.classes), -1))
        offset += len(lab.classes)
    return {"object_of_token": torch.cat(token_object), "object_classes": torch.cat(classes)}


def pop_object_targets(
    batch: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Remove the object targets from a collated batch: ``(object_of_token, object_classes,
    query_keys)`` or None."""
    if "object_of_token" not in batch:
        return None
    return batch.pop("object_of_token"), batch.pop("object_classes"), batch.pop("query_keys")
