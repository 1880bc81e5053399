#!/usr/bin/env python3
"""What a page of memory costs the first time it is written, against the second time: the
machine's price for new memory, which an access log pays for every page its file grows by (the
kernel gives the file's page cache fresh pages). On a bare-metal Linux machine a first touch is a
page fault and a cleared page, well under a microsecond per 4 KiB; on a VM whose host takes free
memory back from its guest, the host must back the page again first, and that can cost several
times as much (bench/README.md, 2026-12-04 late evening).

Maps SIZE MiB of anonymous memory, writes one byte per 4 KiB page, then again, and prints the
microseconds per page of each pass (and the first pass's system time); then the same with the
mapping marked for transparent huge pages (one fault per 2 MiB: what is left per 4 KiB is the
cost of the memory itself, not of the fault). ROUNDS times each.

  python3 bench/first_touch.py [SIZE_MIB] [ROUNDS]    # 1024 MiB, 3 rounds
"""
import mmap
import resource
import sys
import time

PAGE = 4096


def touch(m, size, value):
    for i in range(0, size, PAGE):
        m[i] = value


def one(size, huge):
    m = mmap.mmap(-1, size)
    if huge:
        m.madvise(mmap.MADV_HUGEPAGE)
    pages = size // PAGE
    t0, s0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
    touch(m, size, 1)
    t1, s1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
    touch(m, size, 2)
    t2 = time.perf_counter()
    m.close()
    return 1e6 * (t1 - t0) / pages, 1e6 * (s1 - s0) / pages, 1e6 * (t2 - t1) / pages


def main():
    size = (int(sys.argv[1]) if len(sys.argv) > 1 else 1024) << 20
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    for huge in (False, True):
        for _ in range(rounds):
            first, sys_first, second = one(size, huge)
            label = "huge pages" if huge else "4 KiB pages"
            print(f"{label}: first touch {first:.2f} us per 4 KiB (system {sys_first:.2f}), second {second:.2f}")


if __name__ == "__main__":
    main()
