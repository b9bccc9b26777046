"""When a change source gathers: after being behind for a while, never after a burst."""

from service.push.backlog import Backlog


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def steady(backlog: Backlog, clock: Clock, seconds: float, every: float, waiting) -> None:
    """Batches handled `every` seconds for `seconds`; waiting(i) says whether the next was there."""
    for i in range(round(seconds / every)):
        clock.now += every
        backlog.batch_handled(next_waiting=waiting(i))


def test_a_burst_after_a_stall_is_not_gathered():
    # 500 changes/s, each handled at once; now and then the process is descheduled for 20 ms and
    # the changes that piled up take 16 quick batches to clear (the writer, stalled too, catching
    # up one commit at a time): enough for a rule counting batches, not time, to gather.
    clock = Clock()
    backlog = Backlog(clock)
    for _ in range(50):
        steady(backlog, clock, 0.03, 0.002, lambda i: False)
        clock.now += 0.02
        steady(backlog, clock, 0.004, 0.00025, lambda i: True)
        assert not backlog.sustained


def test_a_burst_of_quick_batches_is_not_gathered():
    # A writer catching up after a stall: 20 commits back to back, each handled in 0.2 ms.
    clock = Clock()
    backlog = Backlog(clock)
    steady(backlog, clock, 0.1, 0.002, lambda i: False)
    steady(backlog, clock, 0.004, 0.0002, lambda i: True)
    assert not backlog.sustained


def test_being_behind_for_a_while_is_gathered_even_with_a_gap_now_and_then():
    clock = Clock()
    backlog = Backlog(clock)
    # Batches of a millisecond, the next already waiting after 19 of every 20.
    steady(backlog, clock, 0.02, 0.001, lambda i: i % 20 != 10)
    assert not backlog.sustained  # 20 ms behind is still a burst
    steady(backlog, clock, 0.2, 0.001, lambda i: i % 20 != 10)
    assert backlog.sustained


def test_a_quiet_gap_ends_it():
    clock = Clock()
    backlog = Backlog(clock)
    steady(backlog, clock, 0.5, 0.001, lambda i: True)
    assert backlog.sustained
    backlog.batch_handled(next_waiting=False)
    clock.now += 0.1  # nothing came for 100 ms
    backlog.batch_handled(next_waiting=True)
    assert not backlog.sustained
    steady(backlog, clock, 0.005, 0.001, lambda i: True)
    assert not backlog.sustained  # behind again, but only just
