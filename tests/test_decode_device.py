"""The decode loop on the model's device (issue 20, items 3 and 5), checked on a CPU.

Per answer token the loop may read one small value on the host (the token id it streams
and checks against the stop tokens) and nothing else: no logits copied out, no ids or
positions made on the host. ``tests/_counting.py`` counts what would stall or cross on
CUDA. The preallocated cache must give the same answers as transformers' DynamicCache
while writing each token in place.
"""

from __future__ import annotations

import pytest
import torch
from _counting import TransferCounter

from streamvlm.models import hf_compat
from streamvlm.models.loading import load_backend
from streamvlm.models.tiny import TINY_MODELS
from streamvlm.runtime.decode import SamplingParams, decode_tokens, sample_token

ANSWER_TOKENS = 24
GREEDY = SamplingParams(max_new_tokens=ANSWER_TOKENS, stop_token_ids=())
TOP_P = SamplingParams(max_new_tokens=ANSWER_TOKENS, temperature=0.8, top_p=0.9, seed=3, stop_token_ids=())


@pytest.fixture(scope="module", params=TINY_MODELS)
def backend(request):
    return load_backend(request.param, device="cpu", dtype="float32")


def context(backend, lengths):
    """Random KV with each layer's own length (per-layer retrieval)."""
    generator = torch.Generator().manual_seed(sum(lengths))

    def random(n):
        return torch.randn(backend.num_kv_heads, n, backend.head_dim, generator=generator)

    return [(random(n), random(n)) for n in lengths]


def answer(backend, params, room=None, counter=None):
    """Prefill a question over a per-layer context, then decode; returns (tokens, cache, counts)."""
    lengths = [30 + 7 * i for i in range(backend.num_layers)]
    question = [11, 12, 13, 14]
    cache = backend.new_cache(context(backend, lengths), room=room)
    start = max(lengths)
    hidden = backend.forward(backend.embed_ids(question), backend.text_positions(start, len(question)), cache)
    first_logits = backend.logits(hidden[-1:])[0]
    steps = decode_tokens(backend, cache, first_logits, start + len(question), params)
    if counter is None:
        return list(steps), cache, None
    with counter as counts:
        tokens = list(steps)
    return tokens, cache, counts


@pytest.mark.parametrize("params", [GREEDY, TOP_P], ids=["greedy", "top-p"])
def test_at_most_one_host_read_per_token_and_nothing_crosses(backend, params):
    tokens, _, counts = answer(backend, params, room=8 + ANSWER_TOKENS, counter=TransferCounter())
    assert len(tokens) == ANSWER_TOKENS
    assert counts.host_reads <= len(tokens), counts.ops
    assert counts.device_copies == 0, counts.ops  # no logits to the host
    assert counts.host_tensors == 0, counts.ops  # no ids or positions made on the host


@pytest.mark.parametrize("params", [GREEDY, TOP_P], ids=["greedy", "top-p"])
def test_the_preallocated_cache_answers_like_the_dynamic_cache(backend, params):
    dynamic, dynamic_cache, _ = answer(backend, params)
    preallocated, cache, _ = answer(backend, params, room=4 + ANSWER_TOKENS)
    assert preallocated == dynamic
    assert isinstance(cache.layers[0], hf_compat.PreallocatedLayer)
    for (k, v), (k_ref, v_ref) in zip(
        hf_compat.cached_layers(cache), hf_compat.cached_layers(dynamic_cache), strict=True
    ):
        assert torch.equal(k, k_ref) and torch.equal(v, v_ref)


def test_seeded_sampling_repeats(backend):
    assert answer(backend, TOP_P)[0] == answer(backend, TOP_P)[0]


def test_decoding_writes_into_the_space_allocated_up_front(backend):
    """Each layer keeps its buffer for the whole answer: nothing is reallocated or re-concatenated."""
    lengths = [9 + i for i in range(backend.num_layers)]
    cache = backend.new_cache(context(backend, lengths), room=6)
    buffers = [layer.keys.data_ptr() for layer in cache.layers]
    for step in range(6):
        position = max(lengths) + step
        backend.forward(backend.embed_ids([20 + step]), backend.text_positions(position, 1), cache)
    assert [layer.keys.data_ptr() for layer in cache.layers] == buffers
    assert [layer.capacity for layer in cache.layers] == [n + 6 for n in lengths]
    assert [k.shape[1] for k, _ in hf_compat.cached_layers(cache)] == [n + 6 for n in lengths]


def test_appending_past_the_room_grows_and_keeps_every_slot():
    keys = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    layer = hf_compat.PreallocatedLayer(keys, -keys, room=1)
    new = torch.full((1, 2, 3, 4), 7.0)
    out_keys, out_values = layer.update(new, -new)
    assert layer.capacity >= 6
    assert torch.equal(out_keys, torch.cat([keys, new], dim=2))
    assert torch.equal(out_values, -out_keys)


def test_sample_token_stays_on_the_device_and_keeps_todays_choices():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, generator=generator)
    greedy = sample_token(logits, GREEDY, None)
    assert greedy.shape == (1,) and greedy.dtype == torch.long and greedy.device == logits.device
    assert int(greedy) == int(torch.argmax(logits))
    # top-p: the kept set is the smallest prefix of the sorted tokens whose mass reaches top_p
    probs = torch.softmax(logits / TOP_P.temperature, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True)
    kept = set(order[: int((torch.cumsum(sorted_probs, 0) < TOP_P.top_p).sum()) + 1].tolist())
    draws = {int(sample_token(logits, TOP_P, generator)) for _ in range(300)}
    assert draws <= kept and len(draws) > 1


def test_embed_ids_takes_a_device_tensor(backend):
    ids = torch.tensor([3, 4, 5])
    assert torch.equal(backend.embed_ids(ids), backend.embed_ids([3, 4, 5]))


def test_a_cache_of_parts_holds_their_concatenation_with_room():
    """The question path writes the sink and each block straight into the preallocated space:
    the same slots as concatenating first, with the room after them (per-layer lengths too)."""
    gen = torch.Generator().manual_seed(0)
    parts = [
        [(torch.randn(2, n, 8, generator=gen), torch.randn(2, n, 8, generator=gen)) for n in sizes]
        for sizes in ([3, 5, 2], [3, 1])
    ]
    cache = hf_compat.cache_of_parts(parts, room=4)
    for layer, (k, v), layer_parts in zip(cache.layers, hf_compat.cached_layers(cache), parts, strict=True):
        assert torch.equal(k, torch.cat([pk for pk, _ in layer_parts], dim=1))
        assert torch.equal(v, torch.cat([pv for _, pv in layer_parts], dim=1))
        assert layer.capacity == k.shape[1] + 4
