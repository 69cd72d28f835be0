from __future__ import annotations

from services.common.tokens import TURN_OVERHEAD, count_tokens, newest_within


def test_the_newest_turns_that_fit_are_kept() -> None:
    turns = ["an old question", "its answer", "the newest question"]
    each = [count_tokens(t) + TURN_OVERHEAD for t in turns]
    assert newest_within(turns, sum(each)) == (3, sum(each))
    assert newest_within(turns, each[1] + each[2]) == (2, each[1] + each[2])
    assert newest_within(turns, each[1] + each[2] + 1) == (2, each[1] + each[2])
    assert newest_within(turns, each[2] - 1) == (0, 0)
    assert newest_within([], 100) == (0, 0)


def test_texts_joined_at_a_space_or_a_mark_count_as_the_sum_of_their_counts() -> None:
    parts = ["Request: a cat,", "then 12 dogs", '"quoted"', "x" * 40, "123", "end."]
    for joint in (" ", "\n", '"', ", "):
        joined = joint.join(parts)
        assert count_tokens(joined) == sum(map(count_tokens, [*parts, *[joint] * 5]))
