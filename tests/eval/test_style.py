"""Stylometric profile and distance: properties, not hard-coded numbers."""

from __future__ import annotations

import random

import pytest

from lorakit.eval import style

PROSE = (
    "It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith, his chin nuzzled "
    "into his breast in an effort to escape the vile wind, slipped quickly through the glass doors of Victory "
    "Mansions, though not quickly enough to prevent a swirl of gritty dust from entering along with him. "
    "\"Come here,\" she said; he did not answer. The hallway smelt of boiled cabbage and old rag mats! "
    "At one end of it a coloured poster, too large for indoor display, had been tacked to the wall. "
) * 4
LISTY = ("1 Buy milk 2 Call the bank 3 Fix bike 4 Email Tom re meeting 5 Book dentist\n"
         "Notes: budget Q3 review pending approval items 7 8 9 cost centre codes\n") * 6


def test_profile_of_a_text_is_at_distance_zero_from_itself():
    p = style.profile(PROSE)
    d = style.distance(p, style.profile(PROSE))
    assert all(v == 0.0 for v in d.values()), d


def test_distance_is_symmetric_and_bounded():
    a, b = style.profile(PROSE), style.profile(LISTY)
    ab, ba = style.distance(a, b), style.distance(b, a)
    assert ab == pytest.approx(ba)
    assert all(0.0 <= v <= 1.0 for v in ab.values())


def test_a_different_style_is_farther_than_more_of_the_same():
    rng = random.Random(0)
    sentences = style.split_sentences(PROSE)
    shuffled = " ".join(rng.sample(sentences, len(sentences)))  # same style, other order
    corpus = style.profile(PROSE)
    near = style.distance(style.profile(shuffled), corpus)["distance"]
    far = style.distance(style.profile(LISTY), corpus)["distance"]
    assert near < far
    assert far > 0.2


def test_distance_grows_as_a_foreign_text_is_mixed_in():
    corpus = style.profile(PROSE)
    steps = [style.distance(style.profile([PROSE] * (4 - k) + [LISTY] * k), corpus)["distance"] for k in range(4)]
    assert steps[0] == 0.0
    assert steps == sorted(steps) and steps[-1] > steps[1]


def test_profile_features():
    p = style.profile("One two three. Four five! \"Six,\" said seven?")
    assert p.sentences == 3 and p.words == 8
    assert p.mean_sentence_length == pytest.approx(8 / 3)
    assert sum(p.sentence_length_hist) == pytest.approx(1.0)
    assert p.dialogue_rate == pytest.approx(1 / 3)
    assert p.punctuation[style.PUNCTUATION.index(",")] == pytest.approx(1 / 8)


def test_mattr_does_not_fall_with_length_like_plain_ttr():
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(200)]
    text = [rng.choice(vocab) for _ in range(2000)]
    short, long = style.mattr(text[:200]), style.mattr(text)
    plain_short, plain_long = len(set(text[:200])) / 200, len(set(text)) / 2000
    assert abs(short - long) < 0.05
    assert plain_long < plain_short / 2
    assert style.mattr(["a"] * 100) == pytest.approx(1 / style.MATTR_WINDOW)


def test_empty_text_has_a_profile():
    p = style.profile("")
    assert p.words == 0 and p.sentences == 0
    assert style.distance(p, style.profile(""))["distance"] == 0.0
    assert style.distance(p, style.profile(PROSE))["distance"] > 0.5
