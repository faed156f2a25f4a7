"""Auxiliary retrieval loss: teach the model's own queries and keys to find the right block.

At answer time a session retrieves blocks by the inner product of the question's mean
pre-RoPE query (per KV head, summed over layers) with each block's mean pre-RoPE key
(``retrieval/summaries.py``, ``Backend.question_queries``). A model trained only to answer
clips it sees whole never needs those vectors to single out one block, and the shipped
tiny model's do not: at 256 frames the needle is in the top 4 of 128 blocks for 30-45%
of questions, whichever way the scores are pooled (docs/training.md).

This loss scores, for each question of a batch, every temporal patch of every clip of
the batch exactly as retrieval scores blocks, and is a softmax cross-entropy that puts
the patches showing an object with the question's key (the shape of "what colour was the
circle?", the colour of "what shape was the red one?") above the rest: background,
other objects of the clip, other clips' objects. It trains ``q_proj`` and ``k_proj`` (and
everything under them), adds no weights to the checkpoint, and leaves the retrieval code
unchanged. The temperature is a training-only parameter.
"""

from __future__ import annotations

import math

import torch

from .batches import IGNORE


class RetrievalLoss(torch.nn.Module):
    """Captures each layer's ``q_proj`` and ``k_proj`` outputs and scores questions against patches.

    ``loss`` must follow a training forward of the same batch (the hooks keep that
    forward's projections, with their graphs, until the next one).
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
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
        self, input_ids: torch.Tensor, labels: torch.Tensor, grid_thw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """``(queries [batch, dim], patch summaries [patches, dim], patches per row)``,
        ``dim`` = layers x kv_heads x head_dim: retrieval's vectors, all layers side by side."""
        if any(q is None for q in self._q):
            raise RuntimeError("RetrievalLoss needs a training forward (with gradients) first")
        group = self.heads // self.kv_heads
        queries, summaries, counts = [], [], []
        for row in range(input_ids.shape[0]):
            visual = (input_ids[row] == self.video_token_id).nonzero().flatten()
            v0, v1 = int(visual[0]), int(visual[-1]) + 1
            answer = (labels[row] != IGNORE).nonzero().flatten()
            q1 = int(answer[0]) if len(answer) else int((input_ids[row] != 0).sum())
            t, h, w = (int(x) for x in grid_thw[row])
            per_patch = (h // self.merge) * (w // self.merge)
            q_layers, k_layers = [], []
            for q, k in zip(self._q, self._k, strict=True):
                # the question's mean query per head, query heads averaged onto their KV head
                mean_q = q[row, v1:q1].mean(0).view(self.kv_heads, group, self.head_dim).mean(1)
                q_layers.append(mean_q.flatten())
                k_layers.append(k[row, v0:v1].view(t, per_patch, -1).mean(1))
            queries.append(torch.cat(q_layers))
            summaries.append(torch.cat(k_layers, dim=1))
            counts.append(t)
        return torch.stack(queries), torch.cat(summaries), counts

    def loss(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        grid_thw: torch.Tensor,
        object_of_token: torch.Tensor,
        object_classes: torch.Tensor,
        query_keys: torch.Tensor,
    ) -> torch.Tensor | None:
        """Mean over the batch's keyed questions of -log(softmax mass on matching patches).

        ``query_keys`` [batch, 2]: (attribute column of ``object_classes``, class) each
        question is keyed on, (-1, -1) for questions that are not (they are skipped).
        None when no question of the batch is keyed or has a matching patch.
        """
        queries, summaries, counts = self.vectors(input_ids, labels, grid_thw)
        contents = patch_contents(object_of_token, object_classes, counts)  # [patches, instances]
        keyed = (query_keys[:, 0] >= 0).nonzero().flatten()
        if len(keyed) == 0:
            return None
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
