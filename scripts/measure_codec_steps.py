"""Per-layer time of each step of a codec on the CPU kernels, against a copy of the same bytes.

    python scripts/measure_codec_steps.py [--codec vidkv] [--rounds 7]

One layer is ``bench quant``'s synthetic 7B-like layer (K and V ``[4, 1024, 128]``); like
``bench quant`` it works over 32 copies of it (64 MiB at 16 bits: memory, not caches), decodes
into a float16 cache, and times key decode, value decode, key encode, value encode and a copy
of the 64 MiB in turns, the fastest of ``--rounds`` rounds each. Prints microseconds per layer
as one JSON object. ``bench quant`` reports the same work as GB/s; this splits it into keys and
values, which is what a kernel change moves.

Not a test: timings depend on the machine (on a shared VM, by 2x from one minute to the next).
"""

from __future__ import annotations

import argparse
import json

import torch

from streamvlm import kernels
from streamvlm.bench.quant import best_seconds_together
from streamvlm.quant import get_kv_codec
from streamvlm.quant.synthetic import synthetic_kv

COPIES = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", default="vidkv")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    _, k, v = synthetic_kv(4, 1024, 128)
    codec = get_kv_codec(args.codec)
    keys = [k.clone() for _ in range(COPIES)]
    values = [v.clone() for _ in range(COPIES)]
    enc_k = [kernels.encode(codec, x, "key", 0) for x in keys]
    enc_v = [kernels.encode(codec, x, "value", 0) for x in values]
    cache = torch.empty(COPIES, 2, *k.shape, dtype=torch.float16)
    source, target = torch.empty_like(cache), torch.empty_like(cache)
    steps = {
        "key_decode": lambda: [kernels.decode(e, codec, out=cache[i, 0]) for i, e in enumerate(enc_k)],
        "value_decode": lambda: [kernels.decode(e, codec, out=cache[i, 1]) for i, e in enumerate(enc_v)],
        "key_encode": lambda: [kernels.encode(codec, x, "key", 0) for x in keys],
        "value_encode": lambda: [kernels.encode(codec, x, "value", 0) for x in values],
        "copy": lambda: target.copy_(source),
    }
    seconds = best_seconds_together(list(steps.values()), args.rounds)
    per_layer = {name: round(s / COPIES * 1e6, 1) for name, s in zip(steps, seconds, strict=True)}
    print(json.dumps({"codec": codec.name, "us_per_layer": per_layer, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
