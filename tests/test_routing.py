import random
from collections import Counter
from typing import Any

import pytest

from tracker.domain.campaign import CampaignRoute, FlowPath, LanderRoute, OfferRoute
from tracker.domain.macros import compile_template
from tracker.domain.routing import WeightedChoice
from tracker.domain.rules import compile_rule
from tracker.domain.visitor import Visitor


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


# Chi-square goodness of fit --------------------------------------------------------------

PICKS = 10_000
# Upper critical values of the chi-square distribution at p = 0.001, by degrees of freedom.
CRITICAL_0_001 = {
    1: 10.828,
    2: 13.816,
    3: 16.266,
    4: 18.467,
    5: 20.515,
    6: 22.458,
    7: 24.322,
    8: 26.124,
    9: 27.877,
    10: 29.588,
}
Z_0_001 = 3.090232  # the standard normal's upper 0.001 quantile


def critical_value(df: int) -> float:
    """From the table, else the Wilson-Hilferty approximation (within 0.5% from 10 up)."""
    if df in CRITICAL_0_001:
        return CRITICAL_0_001[df]
    k = 2 / (9 * df)
    return df * (1 - k + Z_0_001 * k**0.5) ** 3


def chi_square(counts: Counter[Any], weights: dict[Any, int], picks: int) -> float:
    total = sum(weights.values())
    return sum(
        (counts[item] - picks * w / total) ** 2 / (picks * w / total) for item, w in weights.items()
    )


def test_wilson_hilferty_agrees_with_the_table():
    for df in range(3, 11):
        k = 2 / (9 * df)
        approx = df * (1 - k + Z_0_001 * k**0.5) ** 3
        assert abs(approx - CRITICAL_0_001[df]) / CRITICAL_0_001[df] < 0.02


WEIGHT_SETS = [
    [1, 1],
    [1, 3],
    [1, 2, 3, 4],
    [5, 0, 5],
    [1, 100],
    [10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
    [1] * 20,
    [1_000_000, 999_999, 1],
]


@pytest.mark.parametrize("weights", WEIGHT_SETS)
def test_picks_fit_the_weights(weights):
    random.seed(len(weights) * 1009 + sum(weights))
    choice = WeightedChoice(list(enumerate(weights)))
    counts = Counter(choice.pick() for _ in range(PICKS))
    positive = {i: w for i, w in enumerate(weights) if w > 0}
    assert set(counts) <= set(positive)  # a zero weight is never picked
    # Expected counts under 5 make the statistic unreliable; merge such cells into one.
    total = sum(positive.values())
    small = {i for i, w in positive.items() if PICKS * w / total < 5}
    if small:
        merged = Counter({i: n for i, n in counts.items() if i not in small})
        merged["rest"] = sum(counts[i] for i in small)
        positive = {i: w for i, w in positive.items() if i not in small}
        positive["rest"] = sum(weights[i] for i in small)
        counts = merged
    df = len(positive) - 1
    if df == 0:
        return
    statistic = chi_square(counts, positive, PICKS)
    assert statistic < critical_value(df), (statistic, critical_value(df), counts)


def test_the_check_sees_a_wrong_split():
    # The same statistic flags picks that do not follow the weights claimed.
    random.seed(3)
    choice = WeightedChoice([("a", 45), ("b", 55)])
    counts = Counter(choice.pick() for _ in range(PICKS))
    assert chi_square(counts, {"a": 50, "b": 50}, PICKS) > critical_value(1)


def test_a_multi_offer_campaign_path_fits_its_weights():
    offers = [
        OfferRoute(
            id=i,
            url=compile_template(f"https://o{i}.example/"),
            affiliate_network_id=1,
            payout=None,
            currency="USD",
        )
        for i in range(1, 6)
    ]
    landers = [LanderRoute(id=i, url=compile_template(f"https://l{i}.example/")) for i in (1, 2)]
    default = {1: 10, 2: 30, 3: 60}
    rule_offers = {3: 1, 4: 1, 5: 2}
    rule = compile_rule(
        0,
        {"conditions": [{"field": "param:sub1", "op": "in", "values": ["rule"]}]},
        FlowPath(
            offers=WeightedChoice([(offers[i - 1], w) for i, w in rule_offers.items()]),
            landers=WeightedChoice([(landers[0], 1), (landers[1], 4)]),
        ),
    )
    route = CampaignRoute(
        id=1,
        key="k",
        traffic_source_id=1,
        external_id_param="external_id",
        cost_param="cost",
        cost_model="none",
        cost_value=None,
        attribution_window_days=30,
        report_currency="USD",
        offers=WeightedChoice([(offers[i - 1], w) for i, w in default.items()]),
        rules=(rule,),
    )
    visitor = Visitor(ip=None, user_agent=None, referrer=None, language=None)
    random.seed(11)
    for params, weights in (({}, default), ({"sub1": "RULE"}, rule_offers)):
        counts: Counter[int] = Counter()
        lander_counts: Counter[int] = Counter()
        for _ in range(PICKS):
            _, path = route.choose_path(visitor, params, None, 0)
            counts[path.offers.pick().id] += 1
            if path.landers:
                lander_counts[path.landers.pick().id] += 1
        assert set(counts) == set(weights)
        assert chi_square(counts, weights, PICKS) < critical_value(len(weights) - 1)
    assert chi_square(lander_counts, {1: 1, 2: 4}, PICKS) < critical_value(1)
