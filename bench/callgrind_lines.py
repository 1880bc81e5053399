#!/usr/bin/env python3
"""Where a request's instructions go, by routeid source line: reads a callgrind profile made
with `--dump-instr=yes` (bench/instructions.sh with VG_OPTS="--dump-instr=yes" TOP=1 keeps it
in bench/out/callgrind-<run>.out) and puts each instruction's cost on the innermost routeid
source line it was inlined into (`addr2line -i` on the binary), per request.

  python3 bench/callgrind_lines.py lines  PROFILE BINARY REQUESTS [TOP]      # self cost by routeid line
  python3 bench/callgrind_lines.py line   PROFILE BINARY REQUESTS FILE:LINE  # one line: self + what it calls
  python3 bench/callgrind_lines.py calls  PROFILE BINARY REQUESTS CALLEE     # call sites of a function
  python3 bench/callgrind_lines.py diff   PROFILE_A BINARY_A REQUESTS_A PROFILE_B BINARY_B REQUESTS_B [TOP]

REQUESTS is the run's request count (bench/instructions.sh prints it). With fat LTO and PGO
nearly everything is inlined into a few functions, so callgrind's own per-function view says
little; this is how the costs in bench/README.md were found (the timer, the clock reads, the
access log's fields).
"""
import collections
import re
import subprocess
import sys


def records(path):
    """Yields (kind, address, cost, callee, count) per cost line: kind 'self' or 'call'."""
    names, addr, callee, pending = {}, 0, None, 0

    def name(v):
        m = re.match(r"\((\d+)\)(?: (.*))?", v)
        if not m:
            return v
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), "?")

    for raw in open(path, errors="replace"):
        line = raw.rstrip("\n")
        if not line:
            continue
        if line.startswith("cfn="):
            callee = name(line[4:])
        elif line.startswith("fn="):
            name(line[3:])
        elif line.startswith("calls="):
            pending = int(line[6:].split()[0])
        elif line[0].isdigit() or line[0] in "+-*":
            parts = line.split()
            tok = parts[0]
            addr = addr if tok == "*" else addr + int(tok, 0) if tok[0] in "+-" else int(tok, 16)
            if len(parts) < 3:
                pending = 0
                continue
            yield ("call" if pending else "self", addr, int(parts[2]), callee if pending else None, pending)
            pending = 0


def frames(binary, addrs):
    """addr -> inlined frames, innermost first, as 'file:line'."""
    out = subprocess.run(["addr2line", "-i", "-a", "-e", binary] + [hex(a) for a in addrs],
                         capture_output=True, text=True).stdout.split("\n")
    result, cur = {}, None
    for line in out:
        if line.startswith("0x"):
            cur = int(line, 16)
            result[cur] = []
        elif line and cur is not None:
            result[cur].append(line.split(" ")[0])
    return result


def ours(chain):
    """The innermost routeid line of a chain of frames, else the innermost frame."""
    for f in chain:
        if "/src/" in f and "/registry/" not in f and "/rustc/" not in f:
            return "src/" + f.split("/src/", 1)[1]
    return (chain[0].split("/src/")[-1] if chain else "?") + " (outside routeid)"


def load(path, binary):
    """Self cost and calls (with callees) per address, and each address's frames."""
    selfc, callees = collections.Counter(), collections.defaultdict(collections.Counter)
    counts = collections.defaultdict(collections.Counter)
    for kind, addr, cost, callee, count in records(path):
        if kind == "self":
            selfc[addr] += cost
        else:
            callees[addr][callee] += cost
            counts[addr][callee] += count
    load.counts = counts
    return selfc, callees, frames(binary, sorted(set(selfc) | set(callees)))


def by_line(path, binary, n):
    """Self cost per request by innermost routeid line."""
    selfc, _, where = load(path, binary)
    rows = collections.Counter()
    for a, c in selfc.items():
        rows[ours(where.get(a, []))] += c / n
    return rows


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "diff":
        a, ba, na, b, bb, nb = args[:6]
        top = int(args[6]) if len(args) > 6 else 30
        before, after = by_line(a, ba, int(na)), by_line(b, bb, int(nb))
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
        print(f"{sum(delta.values()):+.0f} instructions per request (B - A)")
        for k, v in sorted(delta.items(), key=lambda kv: -abs(kv[1]))[:top]:
            print(f"{v:+8.0f}  {k}")
        return
    path, binary, n = args[0], args[1], int(args[2])
    if cmd == "lines":
        rows = by_line(path, binary, n)
        print(f"{sum(rows.values()):.0f} instructions per request (self, by innermost routeid line)")
        for k, v in rows.most_common(int(args[3]) if len(args) > 3 else 40):
            print(f"{v:8.0f}  {k}")
        return
    selfc, callees, where = load(path, binary)
    if cmd == "line":
        want = args[3]
        s = sum(c for a, c in selfc.items() if ours(where.get(a, [])) == want)
        calls = collections.Counter()
        for a, c in callees.items():
            if ours(where.get(a, [])) == want:
                calls.update(c)
        print(f"{want}: self {s / n:.0f} + calls {sum(calls.values()) / n:.0f} per request")
        for k, v in calls.most_common(8):
            print(f"{v / n:8.0f}  {k[:100]}")
    elif cmd == "calls":
        want = args[3]
        rows, times = collections.Counter(), collections.Counter()
        for a, c in callees.items():
            hit = sum(v for k, v in c.items() if k and want in k)
            if hit:
                site = ours(where.get(a, []))
                rows[site] += hit
                times[site] += sum(v for k, v in load.counts[a].items() if k and want in k)
        print(f"calls into {want}: {sum(times.values()) / n:.2f} per request, "
              f"{sum(rows.values()) / n:.0f} instructions per request (inclusive)")
        for k, v in rows.most_common(30):
            print(f"{times[k] / n:6.2f} calls {v / n:8.0f} instructions  {k}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
