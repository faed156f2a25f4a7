"""Build each family's frame preprocessing from its model and processor configs."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def qwen_preprocess_for(model_config, processor_config: dict):
    # TEMPORARY stand-in until streamvlm.ingest.preprocess lands.
    v = model_config.vision_config
    p, tp, m = v.patch_size, v.temporal_patch_size, v.spatial_merge_size
    f = p * m

    def run(frames):
        h, w = frames[0].shape[:2]
        h, w = max(f, round(h / f) * f), max(f, round(w / f) * f)
        arr = np.stack([np.asarray(Image.fromarray(x).resize((w, h), Image.BICUBIC)) for x in frames])
        x = torch.from_numpy(arr).float().div(255).permute(0, 3, 1, 2)
        gt, gh, gw = len(frames) // tp, h // p, w // p
        x = x.reshape(gt, tp, 3, gh // m, m, p, gw // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return x.reshape(gt * gh * gw, 3 * tp * p * p), (gt, gh, gw)

    return run


def llava_preprocess_for(model_config, processor_config: dict):
    s = model_config.vision_config.image_size

    def run(frames):
        arr = np.stack([np.asarray(Image.fromarray(x).resize((s, s), Image.BICUBIC)) for x in frames])
        return torch.from_numpy(arr).float().div(255).sub(0.5).div(0.5).permute(0, 3, 1, 2)

    return run
