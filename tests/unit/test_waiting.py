"""eventually(): the tests' one way to poll returns what it waited for, or says what it waited for."""

from __future__ import annotations

import pytest

from tests.support.waiting import eventually


def test_it_returns_the_first_truthy_value_the_condition_gives() -> None:
    answers = iter([None, [], 0, ["the email"], ["a later one"]])
    assert eventually(lambda: next(answers), timeout=5, message="an email", interval=0) == ["the email"]


def test_on_timeout_it_names_what_it_waited_for_and_what_it_last_saw() -> None:
    with pytest.raises(AssertionError) as raised:
        eventually(lambda: [], timeout=0.05, message="the sentinel's email", interval=0.01)
    assert str(raised.value) == "not within 0.05s: the sentinel's email (last returned [])"


def test_a_message_given_as_a_callable_describes_the_state_at_the_timeout() -> None:
    seen: list[str] = []

    def condition() -> bool:
        seen.append("asked")
        return False

    with pytest.raises(AssertionError, match=r"^not within 0.05s: asked \d+ times$") as raised:
        eventually(condition, timeout=0.05, message=lambda: f"asked {len(seen)} times", interval=0.01)
    assert str(raised.value).endswith(f"asked {len(seen)} times")  # worded when the time was up, not before


def test_an_exception_in_the_condition_ends_the_wait_at_once() -> None:
    def condition() -> bool:
        raise AssertionError("the fetcher exited")

    with pytest.raises(AssertionError, match="the fetcher exited"):
        eventually(condition, timeout=60, message="a consumer")
