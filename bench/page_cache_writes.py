#!/usr/bin/env python3
"""System time per byte of appending to a file in the page cache, by where the writes end: why
routeid's log writer ends a steady stream's writes on 64 KiB boundaries of a regular file
(src/log_writer.rs, `Output::aligned_len`).

Appends 200 MiB to a new file in DIR (default /tmp) with writes that
  - end on 64 KiB boundaries of the file ("on-64k", what the writer does),
  - end at the last whole 300-byte line before such a boundary ("whole-lines"),
  - are 65,000 / 65,536 / 260,000 bytes each, wherever they fall,
and prints each pattern's system time per byte (getrusage), ROUNDS times, interleaved, then each
pattern's median. The file
is synced (`sync -d`) and removed after each pattern, outside the measured time.

  python3 bench/page_cache_writes.py [DIR] [ROUNDS]    # ROUNDS: 3
"""
import os
import resource
import statistics
import subprocess
import sys

BOUNDARY = 64 * 1024
LINE = 300
TOTAL = 200 * 1024 * 1024


def size_of(pattern, pos):
    """The next write's size at file offset `pos`."""
    if pattern in ("on-64k", "whole-lines"):
        end = (pos // BOUNDARY + 1) * BOUNDARY
        if end - pos < BOUNDARY // 2:
            end += BOUNDARY
        n = end - pos
        return n if pattern == "on-64k" else n // LINE * LINE
    return pattern


def run(pattern, path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    data = b"x" * (1 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    pos = 0
    while pos < TOTAL:
        pos += os.write(fd, data[: size_of(pattern, pos)])
    spent = resource.getrusage(resource.RUSAGE_SELF).ru_stime - before
    os.close(fd)
    subprocess.run(["sync", "-d", path], check=False)
    os.unlink(path)
    return spent / pos * 1e9


def main():
    where = sys.argv[1] if len(sys.argv) > 1 else "/tmp"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    path = os.path.join(where, f"page-cache-writes-{os.getpid()}.dat")
    patterns = ["on-64k", "whole-lines", 65000, 65536, 260000]
    print("system ns per byte:", "  ".join(str(p) for p in patterns))
    got = {p: [] for p in patterns}
    for _ in range(rounds):
        for p in patterns:
            got[p].append(run(p, path))
        print("  ".join(f"{p}={got[p][-1]:.3f}" for p in patterns))
    print("median:", "  ".join(f"{p}={statistics.median(got[p]):.3f}" for p in patterns))


if __name__ == "__main__":
    main()
