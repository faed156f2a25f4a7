"""Auxiliary retrieval loss: teach the model's own queries and keys to find the right block.

At answer time a session retrieves blocks by the inner product of the question's mean
pre-RoPE query (per KV head, summed over layers) with each block's mean pre-RoPE key
(``retrieval/summaries.py``, ``Backend.question_queries``). A model trained only to answer
clips it sees whole never needs those vectors to single out one block, and the tiny
model's first checkpoint's did not: at 256 frames the needle was in the top 4 of 128
blocks for 28-38% of questions, whichever way the scores were pooled (docs/training.md).

This loss scores, for each question of a batch, every temporal patch of every clip of
the batch exactly as retrieval scores blocks, and is a softmax cross-entropy that puts
the patches showing an object with the question's key (the shape of "what colour was the
circle?", the colour of "what shape was the red one?") above the rest: background,
other objects of the clip, other clips' objects. It trains ``q_proj`` and ``k_proj`` (and
everything under them), adds no weights to the checkpoint, and leaves the retrieval code
unchanged. The temperature is a training-only parameter.

Where the question's queries come from matters. Read over the whole clip
(``query_context="window"``, the training analogue of a session's default), the question
can attend to the very object it names and carry that object's features into its query:
the loss then falls to 0.05 in training, while at answer time, where the needle is not in
the window, the needle is in the top 4 for only half the questions (docs/training.md).
``query_context="sink"`` reads the question over the sink alone, in a second, text-only
forward, exactly as a session with ``MemoryConfig(query_context="sink")`` does.
"""

from __future__ import annotations

import math

import torch

from ..config import QUERY_CONTEXTS
from .batches import IGNORE


class RetrievalLoss(torch.nn.Module):
    """Captures each layer's ``q_proj`` and ``k_proj`` outputs and scores questions against patches.

    ``loss`` must follow a training forward of the same batch (the hooks keep that
    forward's projections, with their graphs, until the next one).
    """

    def __init__(self, model: torch.nn.Module, query_context: str = "sink"):
        super().__init__()
        if query_context not in QUERY_CONTEXTS:
            raise ValueError(
                f"query_context must be one of {', '.join(QUERY_CONTEXTS)}, got {query_context!r}"
            )
        self.model = [model]  # in a list: not a submodule (its parameters are trained elsewhere)
        self.query_context = query_context
        text = model.config.get_text_config()
        self.heads = text.num_attention_heads
        self.kv_heads = text.num_key_value_heads
        self.head_dim = text.hidden_size // self.heads
        self.video_token_id = model.config.video_token_id
        self.merge = model.config.vision_config.spatial_merge_size
        layers = model.model.language_model.layers
        self._q: list[torch.Tensor | None] = [None] * len(layers)
        self._k: list[torch.Tensor | None] = [None] * len(layers)
        # scores are sums of inner products over layers: start the softmax near unit scale
        self.log_scale = torch.nn.Parameter(torch.tensor(-0.5 * math.log(self.head_dim * len(layers))))
        for i, layer in enumerate(layers):
            layer.self_attn.q_proj.register_forward_hook(self._saver(self._q, i))
            layer.self_attn.k_proj.register_forward_hook(self._saver(self._k, i))

    @staticmethod
    def _saver(store: list, index: int):
        def save(_module, _inputs, output):
            store[index] = output if torch.is_grad_enabled() else None

        return save

    def vectors(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        grid_thw: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """``(queries [batch, dim], patch summaries [patches, dim], patches per row)``,
        ``dim`` = layers x kv_heads x head_dim: retrieval's vectors, all layers side by side.

        Call right after the training forward of the batch; with ``query_context="sink"``
        this runs the question-alone forward (which needs ``position_ids``)."""
        if any(k is None for k in self._k):
            raise RuntimeError("RetrievalLoss needs a training forward (with gradients) first")
        spans = [_spans(input_ids[row], labels[row], self.video_token_id) for row in range(len(input_ids))]
        summaries, counts = [], []
        for row, (v0, v1, _q1) in enumerate(spans):
            t, h, w = (int(x) for x in grid_thw[row])
            per_patch = (h // self.merge) * (w // self.merge)
            summaries.append(
                torch.cat([k[row, v0:v1].view(t, per_patch, -1).mean(1) for k in self._k], dim=1)
            )
            counts.append(t)
        if self.query_context == "sink":
            if position_ids is None:
                raise ValueError("query_context='sink' needs the batch's position_ids")
            questions, offsets = self._question_alone(input_ids, position_ids, spans)
        else:
            questions, offsets = self._q, [v1 for _v0, v1, _q1 in spans]
        group = self.heads // self.kv_heads
        queries = []
        for row, (_v0, v1, q1) in enumerate(spans):
            start = offsets[row]
            # the question's mean query per head, query heads averaged onto their KV head
            queries.append(
                torch.cat(
                    [
                        q[row, start : start + q1 - v1]
                        .mean(0)
                        .view(self.kv_heads, group, self.head_dim)
                        .mean(1)
                        .flatten()
                        for q in questions
                    ]
                )
            )
        return torch.stack(queries), torch.cat(summaries), counts

    def _question_alone(self, input_ids, position_ids, spans) -> tuple[list[torch.Tensor], list[int]]:
        """Each row's sink and question, without its video, through the model (text only, at
        the training positions); the captured queries and where each question starts."""
        rows = [
            (
                torch.cat([input_ids[row, :v0], input_ids[row, v1:q1]]),
                torch.cat([position_ids[:, row, :v0], position_ids[:, row, v1:q1]], dim=1),
            )
            for row, (v0, v1, q1) in enumerate(spans)
        ]
        length = max(len(ids) for ids, _ in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        positions = torch.zeros(3, len(rows), length, dtype=torch.long)
        for row, (row_ids, row_positions) in enumerate(rows):
            ids[row, : len(row_ids)] = row_ids
            mask[row, : len(row_ids)] = 1
            positions[:, row, : len(row_ids)] = row_positions
        self.model[0](input_ids=ids, attention_mask=mask, position_ids=positions)
        return list(self._q), [v0 for v0, _v1, _q1 in spans]

    def loss(
        self,
        batch: dict[str, torch.Tensor],
        object_of_token: torch.Tensor,
        object_classes: torch.Tensor,
        query_keys: torch.Tensor,
    ) -> torch.Tensor | None:
        """Mean over the batch's keyed questions of -log(softmax mass on matching patches).

        ``batch``: the collated model inputs the training forward just ran on (with
        ``labels``). ``query_keys`` [batch, 2]: (attribute column of ``object_classes``,
        class) each question is keyed on, (-1, -1) for questions that are not (they are
        skipped). None when no question of the batch is keyed or has a matching patch.
        """
        keyed = (query_keys[:, 0] >= 0).nonzero().flatten()
        if len(keyed) == 0:
            return None
        queries, summaries, counts = self.vectors(
            batch["input_ids"], batch["labels"], batch["video_grid_thw"], batch.get("position_ids")
        )
        contents = patch_contents(object_of_token, object_classes, counts)  # [patches, instances]
        attr = query_keys[keyed, 0]
        value = query_keys[keyed, 1]
        # matches[i, p]: patch p shows an object whose attribute attr[i] equals value[i]
        classes = object_classes[:, attr].T  # [keyed, instances]
        matches = (contents.unsqueeze(0) & (classes == value[:, None]).unsqueeze(1)).any(-1)
        scores = (queries[keyed] @ summaries.T) * self.log_scale.exp()
        has = matches.any(1)
        if not has.any():
            return None
        scores, matches = scores[has], matches[has]
        positive = scores.masked_fill(~matches, float("-inf")).logsumexp(1)
        return (scores.logsumexp(1) - positive).mean()


def _spans(input_ids: torch.Tensor, labels: torch.Tensor, video_token_id: int) -> tuple[int, int, int]:
    """``(first video token, end of video = start of question, end of question)`` of one row."""
    visual = (input_ids == video_token_id).nonzero().flatten()
    answer = (labels != IGNORE).nonzero().flatten()
    if len(visual) == 0 or len(answer) == 0:
        raise ValueError("a retrieval-loss row needs video tokens and an answer")
    return int(visual[0]), int(visual[-1]) + 1, int(answer[0])


def patch_contents(
    object_of_token: torch.Tensor, object_classes: torch.Tensor, counts: list[int]
) -> torch.Tensor:
    """[patches, instances] bool: which object instances each temporal patch of the batch shows
    (the rows' visual tokens are concatenated in order, ``counts`` patches per row)."""
    patches = sum(counts)
    per_patch = len(object_of_token) // patches
    ids = object_of_token.view(patches, per_patch)
    out = torch.zeros(patches, len(object_classes), dtype=torch.bool)
    rows, cols = (ids >= 0).nonzero(as_tuple=True)
    out[rows, ids[rows, cols]] = True
    return out
