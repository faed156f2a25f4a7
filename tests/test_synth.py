"""The synthetic world: deterministic, cheap to render, and every question's answer follows
from the event list (checked against an independent re-computation from the question text)."""

from __future__ import annotations

import argparse
import json
import re
import time

import numpy as np
import pytest

from streamvlm.errors import ConfigError
from streamvlm.ingest import FileSource
from streamvlm.synth import (
    COLOUR_RGB,
    COLOURS,
    FAMILIES,
    SHAPES,
    VOCABULARY,
    Event,
    World,
    load,
    make_clip_sample,
    make_needle_stream,
    make_questions,
    sample_questions,
    sidecar_path,
    words,
    write,
)
from streamvlm.synth.background import PALETTES, texture_tile
from streamvlm.synth.cli import add_synth_parser
from streamvlm.synth.cli import main as synth_main
from streamvlm.synth.glyphs import digit_mask, digit_offset, digit_scale
from streamvlm.synth.vocab import DIGIT_INK

# ------------------------------------------------------------------ independent reference


def reference_answer(world: World, text: str, asked_at: float) -> str | None:
    """The answer to ``text`` recomputed from the events' times and attributes, or
    ``None`` when the question is ambiguous (or unanswerable) at ``asked_at``."""
    t_frame = np.floor(asked_at * world.fps + 1e-6) / world.fps  # the last frame seen
    seen = [e for e in world.events if e.t_start <= t_frame + 1e-9]
    toks = words(text)
    shapes = [w for w in toks if w in SHAPES]
    colours = [w for w in toks if w in COLOURS]
    if "digit" in toks or "number" in toks:
        match = [e for e in seen if e.shape == shapes[0]]
        return str(match[0].digit) if len(match) == 1 and match[0].digit is not None else None
    if "how" in toks or "count" in toks:
        n = sum(e.colour == colours[0] for e in seen)
        return str(n) if n <= 9 else None
    if "now" in toks:
        on = [e for e in world.events if e.t_start <= t_frame < e.t_end]
        return "nothing" if not on else f"{on[0].colour} {on[0].shape}" if len(on) == 1 else None
    if "first" in toks:
        named = [(colours[0], shapes[0]), (colours[1], shapes[1])]
        found = [[e for e in seen if (e.colour, e.shape) == n] for n in named]
        if any(len(f) != 1 for f in found) or found[0][0].t_start == found[1][0].t_start:
            return None
        first = min((found[0][0], found[1][0]), key=lambda e: e.t_start)
        return f"{first.colour} {first.shape}"
    if "colour" in toks:
        match = [e for e in seen if e.shape == shapes[0]]
        return match[0].colour if len(match) == 1 else None
    if "shape" in toks:
        match = [e for e in seen if e.colour == colours[0]]
        return match[0].shape if len(match) == 1 else None
    raise AssertionError(f"unrecognised question {text!r}")


def check_question(world: World, q) -> None:
    assert q.family in FAMILIES
    assert reference_answer(world, q.text, q.asked_at) == q.answer, q
    assert all(w in VOCABULARY for w in words(q.text) + words(q.answer)), q
    if q.event_ids:
        oldest = min(world.events[i].t_end for i in q.event_ids)
        assert q.distance == pytest.approx(q.asked_at - oldest)
    else:
        assert q.distance is None


def random_worlds(n: int):
    rng = np.random.default_rng(123)
    for seed in range(n):
        if seed % 3:
            yield World(seed, 16, n_events=int(rng.integers(1, 4)), max_on_screen=int(rng.integers(1, 3)))
        else:
            yield World(seed, 240, events_per_minute=10, max_on_screen=2, scene_seconds=30)


SMALL = 36  # object side of the hand-made worlds: two objects fit side by side at 112 px


def make_event(i, shape, colour, start, end, x=10, y=10, digit=None, size=SMALL) -> Event:
    return Event(i, shape, colour, digit, start, end, 1.0, size, ((x, y),) * (end - start))


# ------------------------------------------------------------------ determinism


def test_same_seed_same_world_different_seed_different_world():
    a, b, c = (
        World(7, 180, events_per_minute=8),
        World(7, 180, events_per_minute=8),
        World(8, 180, events_per_minute=8),
    )
    assert a.to_dict() == b.to_dict()
    assert len(a.events) >= 10 and len(a.scenes) >= 2
    assert all(np.array_equal(a.render(i), b.render(i)) for i in range(a.n_frames))
    qa = make_questions(a, a.end_time, 5)
    assert qa == make_questions(b, b.end_time, 5) and len(qa) >= 5
    assert sample_questions(a, 12, 1) == sample_questions(b, 12, 1)
    assert a.to_dict()["events"] != c.to_dict()["events"]
    assert not np.array_equal(a.frames(0, 20), c.frames(0, 20))
    # Rendering order does not matter (textures are made lazily, per scene).
    assert np.array_equal(World(7, 180, events_per_minute=8).render(150), a.render(150))


def test_clip_samples_and_needle_streams_are_deterministic():
    s1, s2 = make_clip_sample(42), make_clip_sample(42)
    assert np.array_equal(s1.frames, s2.frames) and s1.info == s2.info
    n1 = make_needle_stream(3, 600, (5, 50, 400))
    n2 = make_needle_stream(3, 600, (5, 50, 400))
    assert n1.world.to_dict() == n2.world.to_dict() and n1.questions == n2.questions


# ------------------------------------------------------------------ answers follow from events


def test_every_answer_follows_from_the_events():
    rng = np.random.default_rng(0)
    counts = dict.fromkeys(FAMILIES, 0)
    for world in random_worlds(30):
        times = {
            world.end_time,
            *(world.frame_time(int(i)) + 0.5 for i in rng.integers(world.n_frames, size=3)),
        }
        for asked_at in times:
            for q in make_questions(world, asked_at, rng):  # all candidates
                check_question(world, q)
                counts[q.family] += 1
    assert min(counts.values()) >= 20, counts


def test_no_unambiguous_question_is_missed():
    # The converse of the check above: every question the reference can answer for a
    # world's shapes/colours is offered (for the families keyed on one attribute).
    for world in random_worlds(12):
        asked_at = world.end_time
        texts = {q.text: q for q in make_questions(world, asked_at, 0, families=("colour_of_shape",))}
        offered = {w for t in texts for w in words(t) if w in SHAPES}
        expected = {s for s in SHAPES if reference_answer(world, f"What colour was the {s}?", asked_at)}
        assert offered == expected


def test_ambiguous_questions_are_never_asked():
    events = [
        make_event(0, "circle", "red", 0, 3, digit=1),
        make_event(1, "circle", "blue", 5, 8, digit=2),  # two circles: circle questions ambiguous
        make_event(2, "square", "green", 10, 13, digit=3),
        make_event(3, "triangle", "green", 10, 13, x=70, y=70),  # same start as the square; both green
        make_event(4, "cross", "yellow", 15, 18, digit=4),
    ]
    world = World(0, 20, events=events, max_on_screen=2, object_size=SMALL)
    qs = make_questions(world, world.end_time, 0)
    assert not any("circle" in q.text and q.family in ("colour_of_shape", "digit_of_shape") for q in qs)
    assert not any(q.family == "shape_of_colour" and "green" in q.text for q in qs)
    pairs = [q for q in qs if q.family == "which_first"]
    assert pairs and not any("green square" in q.text and "green triangle" in q.text for q in pairs)
    assert {q.answer for q in qs if q.family == "colour_of_shape"} == {"green", "yellow"}
    assert {q.answer for q in qs if q.family == "digit_of_shape"} == {"3", "4"}  # the triangle has none
    # Two objects on screen: no "now" question; one: answered; none: "nothing".
    assert not [q for q in make_questions(world, 11.0, 0) if q.family == "now"]
    assert [q.answer for q in make_questions(world, 16.2, 0) if q.family == "now"] == ["yellow cross"]
    assert [q.answer for q in make_questions(world, 19.0, 0) if q.family == "now"] == ["nothing"]
    # Only what was seen by asked_at counts: at 4 s there is one circle, and it is red.
    early = {q.family: q for q in make_questions(world, 4.0, 0)}
    assert early["colour_of_shape"].answer == "red" and early["digit_of_shape"].answer == "1"
    assert early["colour_of_shape"].distance == 1.0
    # Counts above 9 are not asked.
    many = World(
        0, 40, events=[make_event(i, "circle", "red", 2 * i, 2 * i + 1) for i in range(10)], object_size=SMALL
    )
    counts = {q.text: q.answer for q in make_questions(many, many.end_time, 0, families=("count_colour",))}
    assert counts and not any("red" in t for t in counts) and set(counts.values()) == {"0"}


def test_zero_counts_ask_about_every_absent_colour_alike():
    # The same single red circle in worlds of different seeds: the absent colour asked
    # about ("0") must not be predictable from the events, or "0" becomes a colour prior.
    asked = []
    for seed in range(60):
        world = World(seed, 6, events=[make_event(0, "circle", "red", 1, 3)], object_size=SMALL)
        zeros = [
            q for q in make_questions(world, world.end_time, 0, families=("count_colour",)) if q.answer == "0"
        ]
        assert len(zeros) == 1
        asked += [c for c in COLOURS if c in zeros[0].text]
    assert set(asked) == set(COLOURS) - {"red"}
    assert max(asked.count(c) for c in set(asked)) <= 2 * min(asked.count(c) for c in set(asked))


def test_rendered_pixels_show_the_events():
    ink = np.asarray(DIGIT_INK)
    palette = np.asarray([*COLOUR_RGB.values(), DIGIT_INK])
    checked = 0
    for world in random_worlds(9):
        for e in world.events:
            i = (e.frame_start + e.frame_end - 1) // 2
            img = world.render(i).astype(int)
            x, y = e.position(i)
            box = img[y : y + e.size, x : x + e.size]
            own = (box == COLOUR_RGB[e.colour]).all(-1)
            assert own.mean() > 0.3, (e, own.mean())  # its colour fills most of its box
            everywhere = (img == COLOUR_RGB[e.colour]).all(-1).sum()
            others = sum(o.colour == e.colour for o in world.on_screen(i))
            if others == 1:
                assert everywhere == own.sum()  # ... and appears nowhere else
            inked = (box == ink).all(-1)
            if e.digit is None:
                assert not inked.any()
            else:  # the digit's glyph, exactly where it should be
                s = digit_scale(e.size)
                dx, dy = digit_offset(e.shape, e.size, s)
                m = digit_mask(e.digit, s)
                assert np.array_equal(inked[dy : dy + m.shape[0], dx : dx + m.shape[1]], m)
            checked += 1
        empty = [i for i in range(world.n_frames) if not world.on_screen(i)][:20]
        for i in empty:
            img = world.render(i).astype(int)
            dist = np.abs(img[:, :, None, :] - palette[None, None]).max(-1).min()
            assert dist >= 40, (world, i, dist)  # no object colour (or ink) in an empty frame
    assert checked >= 40


def test_backgrounds_keep_away_from_object_colours():
    palette = np.asarray([*COLOUR_RGB.values(), DIGIT_INK])
    for p in range(len(PALETTES)):
        tile = texture_tile(p + 100, p, 112).reshape(-1, 3).astype(int)
        assert np.abs(tile[:, None] - palette[None]).max(-1).min() >= 50
        assert 30 <= np.ptp(tile.mean(-1)) <= 60  # low contrast, but visible


# ------------------------------------------------------------------ video-like statistics


def test_consecutive_frames_are_redundant_except_at_cuts_and_objects():
    world = World(0, 600, events_per_minute=6)
    frames = world.frames().astype(np.int16)
    diff = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # diff[k]: frame k -> k+1
    cuts = {c - 1 for c in world.scene_cuts}
    busy = {k for k in range(len(diff)) if world.on_screen(k) or world.on_screen(k + 1)}
    quiet = [k for k in range(len(diff)) if k not in cuts and k not in busy]
    assert len(cuts) >= 5 and len(quiet) >= 300
    assert diff[quiet].max() < 3.0 and np.median(diff[quiet]) < 1.5
    assert diff[sorted(cuts)].min() > 8.0
    entries = [e.frame_start - 1 for e in world.events if e.frame_start - 1 not in cuts and e.frame_start > 0]
    assert diff[entries].min() > 2 * np.median(diff[quiet])


def test_render_speed_3600_frames():
    world = World(0, 3600)
    assert world.n_frames == 3600 and len(world.events) > 100
    t0 = time.perf_counter()
    for i in range(world.n_frames):
        world.render(i)
    per_frame = (time.perf_counter() - t0) / world.n_frames
    assert per_frame < 5e-3, f"{per_frame * 1e3:.2f} ms per frame"


# ------------------------------------------------------------------ tasks


def test_clip_samples():
    families = []
    for seed in range(60):
        s = make_clip_sample(seed)
        assert s.frames.shape == (16, 112, 112, 3) and s.frames.dtype == np.uint8
        assert 1 <= len(s.world.events) <= 3
        assert s.info.asked_at == s.world.end_time == 15.0
        check_question(s.world, s.info)
        assert (s.question, s.answer) == (s.info.text, s.info.answer)
        families.append(s.info.family)
    assert set(families) == set(FAMILIES)
    s = make_clip_sample(1, n_frames=12, fps=2.0, size=64, n_events=2, families=("now",))
    assert s.frames.shape == (12, 64, 64, 3) and len(s.world.events) == 2 and s.info.family == "now"
    with pytest.raises(ConfigError):
        make_clip_sample(0, n_frames=33)


def test_needle_stream_distances_and_unique_needles():
    distances = (0, 30, 300, 3000)
    ns = make_needle_stream(5, 3600, distances, mid_questions=2)
    w = ns.world
    assert w.n_frames == 3600 and len(ns.needles) == 4 and len(w.events) > 20
    needles = [w.events[i] for i in ns.needles]
    others = [e for e in w.events if e.id not in ns.needles]
    assert len({e.shape for e in needles}) == len({e.colour for e in needles}) == 4
    assert all(e.digit is not None for e in needles)
    assert not {e.shape for e in others} & {e.shape for e in needles}
    assert not {e.colour for e in others} & {e.colour for e in needles}
    final = [q for q in ns.questions if q.asked_at == w.end_time]
    assert sorted(q.distance for q in final) == sorted(distances)
    mid = [q for q in ns.questions if q.asked_at < w.end_time]
    assert mid and all(q.distance >= 0 for q in mid)
    for q in ns.questions:
        check_question(w, q)
        assert len(q.event_ids) == 1 and q.event_ids[0] in ns.needles
    two = make_needle_stream(1, 300, (5, 7, 100), max_on_screen=2, object_size=30, scene_seconds=None)
    assert len(two.world.scenes) == 1 and {e.size for e in two.world.events} == {30}
    assert all(check_question(two.world, q) is None for q in two.questions)
    with pytest.raises(ConfigError):
        make_needle_stream(0, 600, (10, 12))  # two needles on screen at once
    with pytest.raises(ConfigError):
        make_needle_stream(0, 600, (700,))  # before the stream starts


def test_vocabulary_is_sorted_unique_and_complete():
    assert VOCABULARY == sorted(set(VOCABULARY))
    assert {*SHAPES, *COLOURS, "nothing", *"0123456789", "?"} <= set(VOCABULARY)
    assert len(VOCABULARY) < 80


# ------------------------------------------------------------------ files and CLI


def test_write_decodes_and_sidecar_matches(tmp_path):
    world = World(4, 12, fps=2.0, events_per_minute=20)
    path = write(world, tmp_path / "w.mp4", n_questions=6)
    frames = list(FileSource(path))
    assert len(frames) == world.n_frames == 24
    assert frames[-1].t == pytest.approx(world.end_time, abs=1e-3)
    for f in frames[::5]:
        err = np.abs(f.rgb.astype(int) - world.render(f.index).astype(int)).mean()
        assert err < 6, err  # lossy, but the same picture
    doc = json.loads(sidecar_path(path).read_text())
    assert doc["world"]["events"] == [e.to_dict() for e in world.events]
    assert doc["world"]["n_frames"] == 24 and len(doc["questions"]) == 6
    again, questions = load(path)
    assert again.to_dict() == world.to_dict() and np.array_equal(again.render(7), world.render(7))
    for q in questions:
        check_question(world, q)
    with pytest.raises(ConfigError):
        write(world, tmp_path / "w.avi")


def test_cli_make(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="streamvlm")
    add_synth_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "c.mp4"
    args = parser.parse_args(
        ["synth", "make", "--seconds", "8", "--out", str(out), "--seed", "3", "--questions", "4"]
    )
    assert args.func(args) == 0
    assert "wrote" in capsys.readouterr().out
    assert len(list(FileSource(out))) == 8
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["world"]["seed"] == 3 and len(doc["questions"]) == 4
    bad = parser.parse_args(["synth", "make", "--seconds", "8", "--out", str(out), "--size", "47"])
    with pytest.raises(ConfigError):
        bad.func(bad)
    assert synth_main(["make", "--seconds", "8", "--out", str(tmp_path / "x.avi")]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: [^\n]+\n", err), err
    assert synth_main(["make", "--seconds", "8", "--out", str(tmp_path / "no" / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: cannot write [^\n]+ does not exist; create it first\n", err), err


def test_bad_options_raise_config_error():
    for kwargs in ({"size": 47}, {"size": 40}, {"fps": 0}, {"max_on_screen": 3}, {"shapes": ("hexagon",)}):
        with pytest.raises(ConfigError):
            World(0, 10, **kwargs)
    with pytest.raises(ConfigError):
        World(0, 4, n_events=3)  # three 2-s events (+ gaps) do not fit in 4 s
    with pytest.raises(ConfigError):
        World(
            0, 10, events=[make_event(0, "circle", "red", 0, 3, x=100)], object_size=SMALL
        )  # leaves the frame
    overlapping = [make_event(0, "circle", "red", 0, 3), make_event(1, "square", "blue", 2, 5, x=30)]
    with pytest.raises(ConfigError):
        World(0, 10, events=overlapping, max_on_screen=2, object_size=SMALL)  # one hides part of the other
    with pytest.raises(ConfigError):
        World(  # two on screen, max_on_screen 1
            0,
            10,
            events=[make_event(0, "circle", "red", 0, 3), make_event(1, "square", "blue", 2, 5, x=60)],
            object_size=SMALL,
        )
    with pytest.raises(ConfigError):
        make_questions(World(0, 10), 5.0, 0, families=("colour_of_thing",))
