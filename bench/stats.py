"""Turning commit records and arrival records into latencies, losses and reorderings."""

import bisect
import math


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def summary_ms(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": ms(percentile(values, 50)), "p90_ms": ms(percentile(values, 90)),
            "p99_ms": ms(percentile(values, 99)), "max_ms": ms(max(values) if values else None)}


def analyze(commits: list, sockets: list, *, epoch: int | None = None) -> dict:
    """Compare what the writers committed with what each socket received.

    commits: [execution_id, seq, tag, t_commit, rtt]; sockets: as loadgen_clients dumps them.
    - latency: per delivered message carrying a committed tag, arrival - commit;
    - visible: per commit and per socket watching it, first arrival of that seq or a newer one;
    - lost: commits a watching socket never saw, neither themselves nor anything newer;
    - coalesced: commits never delivered as such (a newer state replaced them: allowed for status);
    - reordered: messages whose seq is not above the previous one on the same connection.
    """
    by_execution: dict[str, list[tuple[int, float]]] = {}
    tag_time = {}
    for execution_id, seq, tag, t_commit, _rtt in commits:
        by_execution.setdefault(execution_id, []).append((seq, t_commit))
        tag_time[tag] = t_commit
    latency, visible = [], []
    lost = coalesced = reordered = repeated = delivered = 0
    for sock in sockets:
        events = [e for e in sock["events"] if epoch is None or e[4] == epoch]
        events.sort(key=lambda e: e[0])
        seen = set()
        previous = {}
        for t, seq, message, _status, ep, *_ in events:
            if message in tag_time:
                latency.append(t - tag_time[message])
                delivered += 1
            if seq is not None:
                if seq <= previous.get(ep, -1):
                    reordered += 1
                previous[ep] = seq
                if seq in seen:
                    repeated += 1
                seen.add(seq)
        # prefix maximum of seq in arrival order: when was each seq (or newer) first visible
        times, high = [], []
        top = -1
        for t, seq, *_ in events:
            if seq is not None and seq > top:
                top = seq
                times.append(t)
                high.append(seq)
        for seq, t_commit in by_execution.get(sock["execution_id"], ()):
            i = bisect.bisect_left(high, seq)
            if i == len(high):
                lost += 1
                continue
            visible.append(times[i] - t_commit)
            if seq not in seen:
                coalesced += 1
    return {"latency": latency, "visible": visible, "lost": lost, "coalesced": coalesced,
            "reordered": reordered, "repeated": repeated, "delivered": delivered}


def analyze_feed(commits: list, sockets: list, owner_of: dict[str, str]) -> dict:
    """Compare what the writers committed with what each executions-feed socket received.

    commits: as for analyze(); sockets: feed sockets as loadgen_clients dumps them (each with its
    owner, events with their execution); owner_of: execution id -> owner. A feed socket may see
    its owner's executions only, and should see every change to them.
    - latency: per delivered message carrying a committed tag, arrival - commit;
    - visible: per commit and per feed socket of its owner, first arrival of that seq or a newer one;
    - violations: messages about an execution its owner does not own (must be 0; not analysed further);
    - lost: commits a feed socket of their owner never saw, neither themselves nor a newer status;
    - coalesced: commits never delivered as such (a newer status replaced them);
    - reordered: messages whose seq is not above the previous one of that execution on that socket.
    """
    tag_time = {}
    commits_by_owner: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for execution_id, seq, tag, t_commit, _rtt in commits:
        tag_time[tag] = t_commit
        of_owner = commits_by_owner.setdefault(owner_of[execution_id], {})
        of_owner.setdefault(execution_id, []).append((seq, t_commit))
    latency, visible = [], []
    lost = coalesced = reordered = violations = delivered = expected = 0
    for sock in sockets:
        owner = sock["owner"]
        # Per execution, in arrival order: each time a higher seq showed, and that seq.
        times: dict[str, list[float]] = {}
        highs: dict[str, list[int]] = {}
        seen: dict[str, set[int]] = {}
        for t, seq, message, _status, _epoch, execution_id in sock["events"]:
            if owner_of.get(execution_id) != owner:
                violations += 1
                continue
            if message in tag_time:
                latency.append(t - tag_time[message])
                delivered += 1
            if seq is None:
                continue
            high = highs.setdefault(execution_id, [])
            if high and seq <= high[-1]:
                reordered += 1
            else:
                high.append(seq)
                times.setdefault(execution_id, []).append(t)
            seen.setdefault(execution_id, set()).add(seq)
        for execution_id, execution_commits in commits_by_owner.get(owner, {}).items():
            high, at = highs.get(execution_id, []), times.get(execution_id, [])
            for seq, t_commit in execution_commits:
                expected += 1
                i = bisect.bisect_left(high, seq)
                if i == len(high):
                    lost += 1
                    continue
                visible.append(at[i] - t_commit)
                if seq not in seen[execution_id]:
                    coalesced += 1
    return {"latency": latency, "visible": visible, "violations": violations, "lost": lost,
            "coalesced": coalesced, "reordered": reordered, "delivered": delivered, "expected": expected}
