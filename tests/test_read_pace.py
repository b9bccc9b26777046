"""When a change source pauses before reading: once what it reads has come less than a millisecond
apart for a while, and only then."""

from service.push.read_pace import PAUSE_SECONDS, SUSTAINED_SECONDS, ReadPace

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
    # The first 10 ms of them (about 33) are read as they come, each with a wait for the socket
    # after it; from then on every wait is a pause.
    first = pauses.index(True)
    assert 32 <= first <= 36 and all(pauses[first:])
    assert 850 < sum(pauses) < 900  # 0.89 s paced: about one read a millisecond, not 2,970
    assert max(waited) <= PAUSE_SECONDS + 0.00002


def test_a_writer_catching_up_after_a_stall_is_read_as_it_comes():
    # 500 changes a second, and every 100 ms 20 ms of them (10) late and back to back, 0.3 ms apart.
    clock = Clock()
    arrivals = []
    for stall in range(20):
        start = stall * 0.1
        arrivals += [start + 0.0003 * i for i in range(10)]
        arrivals += [start + 0.02 + 0.002 * i for i in range(1, 40)]
    pauses, waited = paced_reads(ReadPace(clock), clock, arrivals)
    assert not any(pauses) and max(waited) == 0


def thick_for(pace: ReadPace, clock: Clock, seconds: float) -> None:
    """Reads finding something 0.3 ms apart, for `seconds`."""
    for _ in range(round(seconds / 0.0003)):
        pace.read(found=True)
        clock.now += 0.0003


def test_a_pause_that_finds_nothing_ends_the_pausing():
    clock = Clock()
    pace = ReadPace(clock)
    thick_for(pace, clock, SUSTAINED_SECONDS + 0.001)
    assert pace.pause()
    clock.now += PAUSE_SECONDS
    pace.read(found=True)  # still coming
    assert pace.pause()
    clock.now += PAUSE_SECONDS
    pace.read(found=False)  # thinned out
    assert not pace.pause()
    clock.now += 0.0003
    thick_for(pace, clock, SUSTAINED_SECONDS / 2)  # thick again, but not for long yet
    assert not pace.pause()


def test_a_read_finding_nothing_right_after_a_hand_over_does_not_end_it():
    clock = Clock()
    pace = ReadPace(clock)
    thick_for(pace, clock, SUSTAINED_SECONDS + 0.001)
    pace.read(found=False)  # the read after handing the batch over: nothing yet, and no pause taken
    assert pace.pause()


def test_a_change_and_its_keepalive_are_each_read_as_they_come():
    # wal at S1's rate: each commit's data, a keepalive 50 us later, then nothing for 2 ms.
    clock = Clock()
    commits = [0.002 * i for i in range(1, 500)]
    keepalives = [t + 0.00005 for t in commits]
    pauses, waited = paced_reads(ReadPace(clock), clock, commits + keepalives)
    assert not any(pauses) and max(waited) == 0
