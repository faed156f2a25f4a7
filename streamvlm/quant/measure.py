"""Print the bit-accounting and error tables of docs/quantization.md.

    python -m streamvlm.quant.measure [--seeds 3]

Small on purpose (a few seconds on one CPU core): synthetic KV from ``synthetic.py``,
shapes [4, 256, 128] (Qwen2.5-VL-7B-like head_dim) and [2, 64, 32] (the tiny test model).
"""

from __future__ import annotations

import argparse

import torch

from ..registry import KV_CODECS
from .metrics import attention_error, relative_error
from .registry import get_kv_codec
from .synthetic import synthetic_kv


def bit_table(shapes: tuple[tuple[int, int, int], ...]) -> str:
    """Markdown: every stored tensor of every codec, its dtype and bits per element, per shape."""
    head = " | ".join(f"{list(shape)}: shape, bits/el" for shape in shapes)
    rows = [f"| codec | kind | tensor | dtype | {head} |", "|---|---|---|---|" + "---|" * len(shapes)]
    for name in KV_CODECS.names():
        for kind in ("key", "value"):
            encs = []
            for shape in shapes:
                _, k, v = synthetic_kv(*shape)
                encs.append(get_kv_codec(name).encode(k if kind == "key" else v, kind))
            # a codec may store other tensors at another shape (vidkv's compact layout for
            # blocks under group_size tokens): one row per name any shape uses, "-" where absent
            names = dict.fromkeys(name for e in encs for name in e.tensors)
            for tname in names:
                t = next(e.tensors[tname] for e in encs if tname in e.tensors)
                dtype = str(t.dtype).replace("torch.", "")
                cells = " | ".join(
                    f"{list(e.tensors[tname].shape)}, {e.bits_by_tensor()[tname] / e.numel:.4f}"
                    if tname in e.tensors
                    else "-"
                    for e in encs
                )
                rows.append(f"| {name} | {kind} | {tname} | {dtype} | {cells} |")
            totals = " | ".join(f"**{e.bits_per_element:.4f}**" for e in encs)
            rows.append(f"| **{name}** | **{kind}** | **total** | | {totals} |")
    state = []
    for shape in shapes:
        codec = get_kv_codec("vidkv")
        codec.encode(synthetic_kv(*shape)[1], "key")
        state.append(f"{codec.shared_bits(0)} bits once per layer")
    rows.append(f"| vidkv | key | per-layer tiers and profiles | uint8 | {' | '.join(state)} |")
    return "\n".join(rows)


# (label, codec name, options): every registered codec with defaults, plus ablations
VARIANTS: list[tuple[str, str, dict]] = [(name, name, {}) for name in KV_CODECS.names()] + [
    ("vidkv, key_4bit_fraction=0", "vidkv", {"key_4bit_fraction": 0.0}),
]


def error_table(shape: tuple[int, int, int], seeds: int, variants=VARIANTS, **data) -> str:
    """Markdown: bits and errors per codec, mean over ``seeds`` synthetic draws."""
    rows = [
        "| codec | K bits/el | V bits/el | K rel. err | V rel. err | attn out err (K only) | attn out err (V only) "
        "| attn out err (K+V) | attn TV |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, name, options in variants:
        acc = torch.zeros(8, dtype=torch.float64)
        for seed in range(seeds):
            q, k, v = synthetic_kv(*shape, seed=seed, **data)
            codec = get_kv_codec(name, **options)
            ek, ev = codec.encode(k, "key"), codec.encode(v, "value")
            kh, vh = codec.decode(ek), codec.decode(ev)
            both = attention_error(q, k, v, kh, vh)
            acc += torch.tensor(
                [
                    ek.bits_per_element,
                    ev.bits_per_element,
                    relative_error(k, kh),
                    relative_error(v, vh),
                    attention_error(q, k, v, kh, v).output_rel_error,
                    attention_error(q, k, v, k, vh).output_rel_error,
                    both.output_rel_error,
                    both.weights_tv,
                ],
                dtype=torch.float64,
            )
        m = (acc / seeds).tolist()
        rows.append(f"| {label} | {m[0]:.3f} | {m[1]:.3f} | " + " | ".join(f"{x:.3f}" for x in m[2:]) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print(f"\n### Stored tensors\n\n{bit_table(((4, 256, 128), (2, 16, 32)))}")
    for shape in ((4, 256, 128), (2, 64, 32)):
        print(f"\n### Errors, shape {list(shape)}, {args.seeds} seeds\n\n{error_table(shape, args.seeds)}")
    low_bit = [v for v in VARIANTS if v[1] in ("kivi2", "vidkv-paper", "vidkv")]
    for outliers in (1, 8):
        table = error_table((4, 256, 128), args.seeds, low_bit, outliers=outliers)
        print(f"\n### Errors, shape [4, 256, 128], {outliers} outlier channel(s) per head\n\n{table}")


if __name__ == "__main__":
    main()
