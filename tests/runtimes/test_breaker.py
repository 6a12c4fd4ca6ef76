"""CircuitBreaker: closed -> open -> half-open -> closed, on an injected clock (no waiting)."""

from __future__ import annotations

import pytest

from runtimes.breaker import BASE_COOLDOWN, FAILURE_THRESHOLD, MAX_COOLDOWN, CircuitBreaker
from runtimes.errors import RuntimeCircuitOpen

RUNTIME_ID = "rt-breaker"


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(RUNTIME_ID, clock=clock)


def fail_times(breaker: CircuitBreaker, count: int) -> None:
    """``count`` calls that went through and failed."""
    for _ in range(count):
        breaker.before_call()
        breaker.record_failure()


def open_breaker(breaker: CircuitBreaker) -> None:
    fail_times(breaker, FAILURE_THRESHOLD)
    assert breaker.state == "open"


def test_defaults_are_five_failures_and_a_capped_cooldown() -> None:
    assert FAILURE_THRESHOLD == 5
    assert 1.0 <= BASE_COOLDOWN < MAX_COOLDOWN


def test_starts_closed_and_lets_calls_through(breaker: CircuitBreaker) -> None:
    assert breaker.state == "closed"
    for _ in range(20):
        breaker.before_call()
        breaker.record_success()
    assert breaker.state == "closed"


def test_stays_closed_below_the_threshold(breaker: CircuitBreaker) -> None:
    fail_times(breaker, FAILURE_THRESHOLD - 1)
    assert breaker.state == "closed"
    breaker.before_call()


def test_opens_after_five_consecutive_failures(breaker: CircuitBreaker) -> None:
    fail_times(breaker, FAILURE_THRESHOLD)
    assert breaker.state == "open"


def test_open_breaker_fast_fails_with_retry_after(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_breaker(breaker)
    with pytest.raises(RuntimeCircuitOpen) as caught:
        breaker.before_call()
    error = caught.value
    assert error.code == "runtime_circuit_open"
    assert error.http_status == 503
    assert error.retryable is True
    assert error.runtime_id == RUNTIME_ID
    assert error.retry_after == int(BASE_COOLDOWN)
    assert error.headers() == {"Retry-After": str(int(BASE_COOLDOWN))}

    clock.advance(BASE_COOLDOWN - 2.2)
    with pytest.raises(RuntimeCircuitOpen) as caught:
        breaker.before_call()
    assert caught.value.retry_after == 3  # 2.2 s left, rounded up


def test_retry_after_is_at_least_one_second(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_breaker(breaker)
    clock.advance(BASE_COOLDOWN - 0.01)
    with pytest.raises(RuntimeCircuitOpen) as caught:
        breaker.before_call()
    assert caught.value.retry_after >= 1


def test_half_open_after_cooldown_lets_exactly_one_trial_through(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    open_breaker(breaker)
    clock.advance(BASE_COOLDOWN)
    assert breaker.state == "half_open"
    breaker.before_call()  # the trial
    with pytest.raises(RuntimeCircuitOpen) as caught:
        breaker.before_call()  # a concurrent second call
    assert caught.value.retry_after >= 1
    with pytest.raises(RuntimeCircuitOpen):
        breaker.before_call()


def test_trial_success_closes(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_breaker(breaker)
    clock.advance(BASE_COOLDOWN)
    breaker.before_call()
    breaker.record_success()
    assert breaker.state == "closed"
    for _ in range(3):
        breaker.before_call()
        breaker.record_success()
    # The failure count starts over: it takes a full threshold again to open.
    fail_times(breaker, FAILURE_THRESHOLD - 1)
    assert breaker.state == "closed"
    fail_times(breaker, 1)
    assert breaker.state == "open"
    # ...and the cooldown is back to the base one.
    clock.advance(BASE_COOLDOWN)
    assert breaker.state == "half_open"


def test_trial_failure_reopens_with_doubled_cooldown(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_breaker(breaker)
    clock.advance(BASE_COOLDOWN)
    breaker.before_call()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.advance(BASE_COOLDOWN)
    assert breaker.state == "open"
    with pytest.raises(RuntimeCircuitOpen) as caught:
        breaker.before_call()
    assert caught.value.retry_after == int(BASE_COOLDOWN)
    clock.advance(BASE_COOLDOWN)
    assert breaker.state == "half_open"
    breaker.before_call()


def test_cooldown_doubling_is_capped(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_breaker(breaker)
    cooldown = BASE_COOLDOWN
    for _ in range(10):
        clock.advance(cooldown)
        breaker.before_call()
        breaker.record_failure()
        cooldown = min(cooldown * 2, MAX_COOLDOWN)
    assert cooldown == MAX_COOLDOWN
    clock.advance(MAX_COOLDOWN - 0.5)
    assert breaker.state == "open"
    with pytest.raises(RuntimeCircuitOpen) as caught:
        breaker.before_call()
    assert caught.value.retry_after == 1
    clock.advance(0.5)
    assert breaker.state == "half_open"


def test_success_resets_the_failure_count(breaker: CircuitBreaker) -> None:
    fail_times(breaker, FAILURE_THRESHOLD - 1)
    breaker.before_call()
    breaker.record_success()
    fail_times(breaker, FAILURE_THRESHOLD - 1)
    assert breaker.state == "closed"


def test_failures_of_calls_in_flight_while_open_do_not_extend_the_cooldown(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    open_breaker(breaker)
    clock.advance(BASE_COOLDOWN - 1)
    breaker.record_failure()  # a call that started before the breaker opened
    clock.advance(1)
    assert breaker.state == "half_open"


def test_repr_names_the_runtime_and_state_only(breaker: CircuitBreaker) -> None:
    assert repr(breaker) == f"CircuitBreaker(runtime_id={RUNTIME_ID!r}, state='closed')"
