"""How often this machine takes a core away from a process that wants it, with nothing else running.

One process per core spins on the clock for a few seconds and records every gap longer than
GAP_MS: time the process did not run although it never slept. On a quiet bare-metal box that is
rare; on a shared or nested virtual machine the host preempts whole vCPUs, often without any
steal time showing in /proc/stat. Every process of the run (server, PostgreSQL, clients, writers)
sees such stalls too, so they set the floor under the tails the scenarios report.

    python -m bench.machine_stalls [--seconds 5]
"""

import argparse
import json
import multiprocessing
import os
import time

GAP_MS = 2.0


def spin(seconds: float) -> list[float]:
    gaps, last = [], time.perf_counter()
    end = last + seconds
    while last < end:
        now = time.perf_counter()
        if now - last > GAP_MS / 1000:
            gaps.append((now - last) * 1000)
        last = now
    return gaps


def measure(seconds: float = 5.0) -> dict:
    cores = len(os.sched_getaffinity(0))
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        per_core = pool.map(spin, [seconds] * cores)
    gaps = sorted(g for core in per_core for g in core)
    return {"seconds": seconds, "cores": cores, "gap_ms": GAP_MS,
            "gaps_per_core_per_s": round(len(gaps) / cores / seconds, 1),
            "over_5ms_per_core_per_s": round(sum(1 for g in gaps if g > 5) / cores / seconds, 2),
            "longest_ms": round(gaps[-1], 1) if gaps else 0.0,
            "lost_share": round(sum(gaps) / 1000 / cores / seconds, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.machine_stalls",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    print(json.dumps(measure(parser.parse_args().seconds)))


if __name__ == "__main__":
    main()
