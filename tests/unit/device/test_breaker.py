from edgecloud.device._endpoints import CircuitBreaker


def test_opens_after_consecutive_failures_and_half_opens_after_cooldown() -> None:
    b = CircuitBreaker(failures=2, cooldown_s=10)
    assert b.allow(0)
    b.record_failure(1)
    assert b.state(1) == "closed"
    b.record_success()
    b.record_failure(2)
    assert b.state(2) == "closed"  # the success reset the count
    b.record_failure(3)
    assert b.state(3) == "open" and not b.allow(12.9)
    assert b.state(13) == "half-open"
    assert b.allow(13)
    assert not b.allow(13.5)  # one trial at a time
    b.record_failure(14)
    assert b.state(14) == "open" and b.state(23.9) == "open"
    assert b.allow(24)
    b.record_success()
    assert b.state(24) == "closed" and b.allow(24)
