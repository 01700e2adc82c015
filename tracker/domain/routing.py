"""Weighted random choice of the offer a click is sent to."""

import random
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class WeightedChoice(Generic[T]):
    """Picks items in proportion to their integer weights (zero-weight items never)."""

    __slots__ = ("_bounds", "_items", "_total")

    def __init__(self, items: Sequence[tuple[T, int]]) -> None:
        self._items: list[T] = []
        self._bounds: list[int] = []
        total = 0
        for item, weight in items:
            if weight > 0:
                total += weight
                self._items.append(item)
                self._bounds.append(total)
        self._total = total

    def __bool__(self) -> bool:
        return self._total > 0

    def __iter__(self) -> Iterator[T]:
        """The items that can be picked (weight above zero), in the given order."""
        return iter(self._items)

    def pick(self) -> T:
        if len(self._items) == 1:
            return self._items[0]
        return self._items[bisect_right(self._bounds, random.randrange(self._total))]
