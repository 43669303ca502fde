#!/usr/bin/env python3
"""Top entries of a py-spy ``--format raw`` profile (collapsed stacks), self and inclusive.

    .venv/bin/python tools/bench/pyspy_top.py PROFILE.raw [--top 15]

Self: samples whose innermost frame is the function. Inclusive: samples with the function
anywhere on the stack (counted once per sample). Idle samples (py-spy's default leaves them
out) are not counted.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def _name(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['func']} ({path})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    with open(args.profile) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = [_name(fr) for fr in stack.split(";")]
            total += n
            self_c[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    print(f"{total} samples")
    print("self:")
    for name, n in self_c.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("inclusive:")
    for name, n in incl.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
