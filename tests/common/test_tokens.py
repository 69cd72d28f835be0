from __future__ import annotations

from services.common.tokens import TURN_OVERHEAD, count_tokens, newest_within


def test_the_newest_turns_that_fit_are_kept() -> None:
    turns = ["an old question", "its answer", "the newest question"]
    each = [count_tokens(t) + TURN_OVERHEAD for t in turns]
    assert newest_within(turns, sum(each)) == 3
    assert newest_within(turns, each[1] + each[2]) == 2
    assert newest_within(turns, each[2] - 1) == 0
    assert newest_within([], 100) == 0
