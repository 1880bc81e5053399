#!/usr/bin/env python3
"""bench/tail_trace.py — the analysis half of bench/tail_trace.sh.

  tail_trace.py round ROUND TARGET OFFSET LOG_TIDS REQUESTS SCHED
      One measured run: REQUESTS is h2load's --log-file (start in µs since 1970, status, µs to
      the end of the answer), SCHED the run's `perf script -F cpu,time,trace` of
      sched:sched_switch on every CPU, stamped on the monotonic clock; OFFSET (seconds) turns
      those stamps into the wall clock's. Prints one tab-separated row: round, target, requests
      per second, p50, p90 and p99 (µs), the p99 of each request's latency less the time the
      log's threads (LOG_TIDS, comma-separated: routeid's writer, and any other thread of the
      log's; `none` for a proxy without them) ran during it, the share of
      requests that overlap a run of those threads (% of all, % of those at or over the p99), and
      their CPU time per request (µs). Exits with an error when any answer was not a 200.
  tail_trace.py header
      The rows' column names, tab-separated.
  tail_trace.py report ROWS
      Medians over rounds of paired ratios between the targets of one round.
"""
import bisect
import re
import statistics
import sys

SWITCH = re.compile(
    r"\s*\[(\d+)\]\s+([0-9.]+): prev_comm=.*? prev_pid=(\d+) .*==> next_comm=.*? next_pid=(\d+)"
)
COLUMNS = ["round", "target", "rps", "p50", "p90", "p99", "p99_less_log", "overlap_pct",
           "overlap_pct_tail", "log_us_req"]


def runs_of(sched_path, offset, tids):
    """The intervals (µs since 1970) in which any of the threads `tids` was on a CPU."""
    on = {}  # cpu -> (pid on it, since)
    runs = []
    for line in open(sched_path):
        m = SWITCH.match(line)
        if not m:
            continue
        cpu, at = int(m.group(1)), (float(m.group(2)) + offset) * 1e6
        prev, nxt = m.group(3), m.group(4)
        if cpu in on and on[cpu][0] == prev and prev in tids:
            runs.append((on[cpu][1], at))
        on[cpu] = (nxt, at)
    return sorted(runs)


def overlaps(requests, runs):
    """For each request (start, end): the time `runs` spent inside it."""
    starts = [a for a, _ in runs]
    longest = max((b - a for a, b in runs), default=0)
    out = []
    for s, e in requests:
        j, o = bisect.bisect_right(starts, e) - 1, 0
        while j >= 0 and runs[j][0] >= s - longest:
            a, b = runs[j]
            o += max(0, min(b, e) - max(a, s))
            j -= 1
        out.append(o)
    return out


def pct(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def one_round(rnd, target, offset, tids, requests_path, sched_path):
    requests, other = [], 0
    for line in open(requests_path):
        start, status, took = line.split("\t")
        requests.append((int(start), int(start) + int(took)))
        other += status != "200"
    if not requests:
        sys.exit(f"{requests_path}: no requests")
    if other:
        # A proxy that answers some requests with errors is not measured by their latency.
        sys.exit(f"{requests_path}: {other} of {len(requests)} answers were not 200")
    t0, t1 = min(s for s, _ in requests), max(e for _, e in requests)
    took = [e - s for s, e in requests]
    by_took = sorted(took)
    p99 = pct(by_took, 0.99)
    runs = runs_of(sched_path, float(offset), set(tids.split(","))) if tids != "none" else []
    inside = overlaps(requests, runs)
    less = sorted(t - o for t, o in zip(took, inside))
    hit = [o > 0 for o in inside]
    tail = [h for h, t in zip(hit, took) if t >= p99]
    log = sum(max(0, min(b, t1) - max(a, t0)) for a, b in runs)
    row = [rnd, target, f"{len(requests) / (t1 - t0) * 1e6:.0f}", pct(by_took, 0.5), pct(by_took, 0.9), p99,
           pct(less, 0.99), f"{100 * sum(hit) / len(hit):.1f}", f"{100 * sum(tail) / len(tail):.1f}",
           f"{log / len(requests):.3f}"]
    print("\t".join(str(v) for v in row), flush=True)


def report(rows_path):
    rows = {}
    for line in open(rows_path):
        f = line.rstrip("\n").split("\t")
        if len(f) == len(COLUMNS):
            rows[(f[0], f[1])] = dict(zip(COLUMNS, f))
    rounds = sorted({r for r, _ in rows}, key=int)
    targets = sorted({t for _, t in rows})
    print("target        rps    p50    p90    p99  p99 less log  overlap %  of the tail %  log threads us/req")
    for t in targets:
        med = lambda c: statistics.median(float(rows[(r, t)][c]) for r in rounds if (r, t) in rows)
        print(f"{t:12s} {med('rps'):6.0f} {med('p50'):6.0f} {med('p90'):6.0f} {med('p99'):6.0f} "
              f"{med('p99_less_log'):13.0f} {med('overlap_pct'):10.1f} {med('overlap_pct_tail'):14.1f} "
              f"{med('log_us_req'):19.3f}")

    def paired(a, b, ca, cb, what):
        v = sorted(float(rows[(r, a)][ca]) / float(rows[(r, b)][cb])
                   for r in rounds if (r, a) in rows and (r, b) in rows)
        if v:
            print(f"{what}: median {statistics.median(v):.3f} over {len(v)} rounds "
                  f"(rounds {v[0]:.2f}..{v[-1]:.2f})")

    print("medians of paired ratios, each round's targets against each other:")
    if "routeid-log" in targets and "routeid" in targets:
        for c in ("p50", "p99", "rps"):
            paired("routeid-log", "routeid", c, c, f"  routeid-log / routeid, {c}")
        paired("routeid-log", "routeid", "p99_less_log", "p99",
               "  routeid-log less its log threads' runs / routeid, p99")
    if "haproxy" in targets:
        for t in targets:
            if t != "haproxy":
                paired(t, "haproxy", "p99", "p99", f"  {t} / haproxy, p99")
                paired(t, "haproxy", "rps", "rps", f"  {t} / haproxy, rps")
        if "routeid-log" in targets:
            paired("routeid-log", "haproxy", "p99_less_log", "p99",
                   "  routeid-log less its log threads' runs / haproxy, p99")


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "round":
        one_round(*sys.argv[2:])
    elif len(sys.argv) == 2 and sys.argv[1] == "header":
        print("\t".join(COLUMNS))
    elif len(sys.argv) == 3 and sys.argv[1] == "report":
        report(sys.argv[2])
    else:
        sys.exit(__doc__)
