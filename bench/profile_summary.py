"""Summarise py-spy raw (collapsed) stacks: where the service's busy time goes.

    python -m bench.profile_summary bench/results/profile-quick/S3.raw [--top 25]

Idle samples (the event loop waiting in epoll/select) are counted apart, so the percentages are
of busy time. Each frame looks like `function (path/to/file.py:line)`.
"""

import argparse
import collections
import re

IDLE = re.compile(r"\b(select|poll|epoll_wait|_run_once \(.*selectors)\b|\(selectors\.py")
FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def short(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['func']} ({path})"


def summarise(path: str, top: int) -> str:
    inclusive, own = collections.Counter(), collections.Counter()
    total = idle = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = [short(fr) for fr in stack.split(";") if fr]
            total += n
            if frames and ("selectors.py" in frames[-1] or frames[-1].startswith(("select ", "poll "))):
                idle += n
                continue
            for fr in set(frames):
                inclusive[fr] += n
            if frames:
                own[frames[-1]] += n
    busy = max(1, total - idle)
    lines = [f"{path}: {total} samples, {100 * idle / max(1, total):.0f}% idle in the event loop's wait; "
             f"percentages below are of the {busy} busy samples", "", "inclusive (function and what it calls):"]
    for fr, n in inclusive.most_common(top):
        lines.append(f"  {100 * n / busy:5.1f}%  {fr}")
    lines += ["", "self (the frame on top of the stack):"]
    for fr, n in own.most_common(top):
        lines.append(f"  {100 * n / busy:5.1f}%  {fr}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    for path in args.paths:
        print(summarise(path, args.top))
        print()


if __name__ == "__main__":
    main()
