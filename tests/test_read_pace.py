"""When a change source pauses before reading: while what it reads comes less than a millisecond
apart, and only then."""

from service.push.read_pace import PAUSE_SECONDS, ReadPace

from .test_backlog import Clock


def paced_reads(pace: ReadPace, clock: Clock, arrivals: list[float]) -> tuple[list[bool], list[float]]:
    """A listener's loop over `arrivals` (times): read (10 us), and when it found nothing, pause
    or wait for the socket (until the next arrival). Returns whether each wait was a pause, and
    how long each arrival waited to be read."""
    pauses, waited = [], []
    pending = sorted(arrivals)
    while pending:
        got = [t for t in pending if t <= clock.now]
        pending = pending[len(got):]
        waited += [clock.now - t for t in got]
        pace.read(found=bool(got))
        clock.now += 0.00001
        if got:
            continue  # handed over, then read again at once
        paused = pace.pause()
        pauses.append(paused)
        if paused:
            clock.now += PAUSE_SECONDS
        elif pending:
            clock.now = max(clock.now, pending[0])
    return pauses, waited


def test_changes_two_milliseconds_apart_are_each_read_as_they_come():
    clock = Clock()
    pauses, waited = paced_reads(ReadPace(clock), clock, [0.002 * i for i in range(1, 500)])
    assert not any(pauses) and max(waited) == 0


def test_changes_a_third_of_a_millisecond_apart_are_read_about_once_a_millisecond():
    clock = Clock()
    pauses, waited = paced_reads(ReadPace(clock), clock, [0.0003 * i for i in range(1, 3001)])
    # Before the first change and after it, no pause; from the second (0.3 ms later) on, pausing.
    assert pauses[:3] == [False, False, True]
    assert 800 < sum(pauses) < 900  # 0.9 s: about one read a millisecond, not 3,000
    assert max(waited) <= PAUSE_SECONDS + 0.00002


def test_a_pause_that_finds_nothing_ends_the_pausing():
    clock = Clock()
    pace = ReadPace(clock)
    pace.read(found=True)
    clock.now += 0.0003
    pace.read(found=True)
    assert pace.pause()
    clock.now += PAUSE_SECONDS
    pace.read(found=True)  # still coming
    assert pace.pause()
    clock.now += PAUSE_SECONDS
    pace.read(found=False)  # thinned out
    assert not pace.pause()
    clock.now += 0.05
    pace.read(found=True)  # one change alone after a quiet spell is read at once
    assert not pace.pause()


def test_a_read_finding_nothing_right_after_a_hand_over_does_not_end_it():
    clock = Clock()
    pace = ReadPace(clock)
    for _ in range(2):
        pace.read(found=True)
        clock.now += 0.0003
    pace.read(found=False)  # the read after handing the batch over: nothing yet, and no pause taken
    assert pace.pause()


def test_a_change_and_its_keepalive_start_a_pause_that_ends_before_the_next_change():
    # wal at S1's rate: each commit's data, a keepalive 50 us later, then nothing for 2 ms.
    clock = Clock()
    commits = [0.002 * i for i in range(1, 500)]
    keepalives = [t + 0.00005 for t in commits]
    pauses, waited = paced_reads(ReadPace(clock), clock, commits + keepalives)
    assert sum(pauses) == len(commits) - 1  # after each keepalive (but the last: the run ends there)
    assert max(waited) == 0  # and every commit read the moment it came
