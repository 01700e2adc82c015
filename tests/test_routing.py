import random
from collections import Counter

import pytest

from tracker.domain.routing import WeightedChoice


def test_picks_in_proportion_to_weight():
    random.seed(7)
    choice = WeightedChoice([("a", 1), ("b", 3), ("never", 0)])
    counts = Counter(choice.pick() for _ in range(20_000))
    assert set(counts) == {"a", "b"}
    assert 0.22 < counts["a"] / 20_000 < 0.28


@pytest.mark.parametrize(
    ("items", "truthy"), [([], False), ([("a", 0)], False), ([("a", 0), ("b", 1)], True)]
)
def test_empty_choice_is_false(items, truthy):
    assert bool(WeightedChoice(items)) is truthy


def test_single_item_is_always_picked():
    assert {WeightedChoice([("only", 5)]).pick() for _ in range(50)} == {"only"}


def test_every_positive_weight_is_reachable():
    random.seed(1)
    choice = WeightedChoice([(i, 1) for i in range(10)])
    assert {choice.pick() for _ in range(2000)} == set(range(10))
