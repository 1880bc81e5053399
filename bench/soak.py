#!/usr/bin/env python3
"""Helpers of bench/soak.sh (standard library only).

  soak.py clients --proxy HOST:PORT --seconds N --header-timeout S
      Slow clients for N seconds, through the pool `slow` (/slow, member s1, never restarted):
      slow readers (a 1 MiB body read 8 KiB every 50 ms through a 16 KiB receive buffer), slow
      senders (a 64 KiB upload sent 4 KiB every 100 ms) and slowloris heads (a header line a
      second, which the proxy must close within twice its header timeout). Prints a JSON summary.

  soak.py verdict --tmp DIR --seconds N --alive 0|1 --rss-tolerance PCT --fd-slack N
                  --idle-fd-slack N
      Reads what soak.sh left in DIR (samples.tsv, fine.tsv, idle.tsv, events.tsv, routeid.log,
      wrk-*.txt, clients.json), prints the table and the checks, exits 1 when one fails.
"""

import argparse
import asyncio
import datetime
import json
import re
import socket
import sys
import time


# ------------------------------------------------------------------------------ slow clients

async def connect(host, port, rcvbuf=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    return await asyncio.open_connection(sock=sock)


async def read_head(reader):
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    return status, int(m.group(1)) if m else None


async def slow_read(host, port):
    reader, writer = await connect(host, port, rcvbuf=16 * 1024)
    try:
        writer.write(b"GET /slow/big HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
        await writer.drain()
        status, length = await read_head(reader)
        got = 0
        while True:
            chunk = await asyncio.wait_for(reader.read(8192), 30)
            if not chunk:
                break
            got += len(chunk)
            await asyncio.sleep(0.05)
        if status != 200 or got != length or got != 1 << 20:
            raise RuntimeError(f"status {status}, {got} of {length} bytes")
    finally:
        writer.close()


async def slow_send(host, port):
    reader, writer = await connect(host, port)
    try:
        writer.write(b"POST /slow/upload HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n"
                     b"Content-Length: 65536\r\n\r\n")
        for _ in range(16):
            writer.write(b"s" * 4096)
            await writer.drain()
            await asyncio.sleep(0.1)
        status, _ = await read_head(reader)
        if status != 200:
            raise RuntimeError(f"status {status}")
    finally:
        writer.close()


async def slowloris(host, port, header_timeout):
    reader, writer = await connect(host, port)
    started = time.monotonic()
    try:
        writer.write(b"GET /slow/ HTTP/1.1\r\nHost: soak\r\n")
        while time.monotonic() - started < 2 * header_timeout + 2:
            try:
                writer.write(b"X-Loris: 1\r\n")
                await writer.drain()
                data = await asyncio.wait_for(reader.read(4096), 1)
                if not data:
                    return  # closed by the proxy: expected
                if not data.startswith(b"HTTP/1.1 408"):
                    raise RuntimeError(f"unexpected answer {data[:40]!r}")
            except asyncio.TimeoutError:
                continue
            except (ConnectionError, OSError):
                return  # reset by the proxy: expected
        raise RuntimeError(f"still open after {time.monotonic() - started:.1f} s")
    finally:
        writer.close()


async def loop(name, fn, deadline, summary, *args):
    s = summary.setdefault(name, {"ok": 0, "fail": 0, "errors": []})
    while time.monotonic() < deadline:
        try:
            await fn(*args)
            s["ok"] += 1
        except Exception as e:  # every failure is reported, none is fatal
            s["fail"] += 1
            if len(s["errors"]) < 10:
                s["errors"].append(f"{time.time():.3f} {type(e).__name__}: {e}")


async def clients(args):
    host, port = args.proxy.rsplit(":", 1)
    port = int(port)
    # New attempts start until a few seconds before the end, so that all end within the run.
    deadline = time.monotonic() + max(1, args.seconds - 5)
    summary = {}
    tasks = [loop("slow_read", slow_read, deadline, summary, host, port) for _ in range(8)]
    tasks += [loop("slow_send", slow_send, deadline, summary, host, port) for _ in range(4)]
    tasks += [loop("slowloris", slowloris, deadline, summary, host, port, args.header_timeout)
              for _ in range(4)]
    await asyncio.gather(*tasks)
    json.dump(summary, sys.stdout, indent=1)


# ------------------------------------------------------------------------------ verdict

def parse_ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def read_events(tmp):
    """(kill time, start time) windows per member; a member never restarted stays down to the end."""
    windows, down = {}, {}
    with open(f"{tmp}/events.tsv") as f:
        for line in f:
            t, kind, what = line.rstrip("\n").split("\t")
            if kind == "kill":
                down[what] = float(t)
            elif kind == "start" and what in down:
                windows.setdefault(what, []).append((down.pop(what), float(t)))
    for m, t in down.items():
        windows.setdefault(m, []).append((t, float("inf")))
    return windows


def expected_error(rec, windows):
    """A 5xx for a member between 1 s before its kill and 3 s after its restart."""
    if rec.get("status", 0) < 500:
        return False
    t = parse_ts(rec["timestamp"])
    route = rec.get("BALANCER_WORKER_ROUTE", "-")
    return any(k - 1 <= t <= s + 3 for k, s in windows.get(route, []))


def read_log(tmp, windows):
    counts = {"expected": 0, "unexpected": [], "warnings": {}}
    with open(f"{tmp}/routeid.log", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                counts["unexpected"].append(f"not a JSON log line: {line.strip()[:200]}")
                continue
            if rec.get("target") == "routeid::access":
                if 200 <= rec.get("status", 0) < 400:
                    continue
                if expected_error(rec, windows):
                    counts["expected"] += 1
                else:
                    counts["unexpected"].append(line.strip()[:300])
            elif rec.get("level") == "ERROR":
                counts["unexpected"].append(line.strip()[:300])
            elif rec.get("level") == "WARN":
                msg = rec.get("message", "?")
                counts["warnings"][msg] = counts["warnings"].get(msg, 0) + 1
    return counts


def read_wrk(path):
    text = open(path).read()
    out = {"requests": 0, "non2xx": 0, "socket_errors": 0}
    m = re.search(r"(\d+) requests in", text)
    out["requests"] = int(m.group(1)) if m else -1
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(map(int, m.groups())) if m else 0
    return out


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def read_samples(path):
    samples = []
    with open(path) as f:
        for line in f:
            t, rss, fds = line.split()
            samples.append((t if not t.isdigit() else int(t), int(rss), int(fds)))
    return samples


def flatness(samples, seconds, rss_tol, fd_slack):
    """The first window after warm-up against the last window."""
    window = 60 if seconds >= 300 else seconds / 3
    base = [s for s in samples if window <= s[0] < 2 * window]
    last = [s for s in samples if s[0] >= seconds - window]
    rss0, rss1 = mean([s[1] for s in base]), mean([s[1] for s in last])
    fd0, fd1 = mean([s[2] for s in base]), mean([s[2] for s in last])
    rss_ok = abs(rss1 - rss0) <= rss0 * rss_tol / 100
    fd_ok = abs(fd1 - fd0) <= fd_slack
    lines = [
        f"RSS  after warm-up {rss0 / 1024:7.1f} MiB, last {window:.0f} s {rss1 / 1024:7.1f} MiB "
        f"({100 * (rss1 - rss0) / rss0:+.1f} %, limit ±{rss_tol} %): {'ok' if rss_ok else 'FAIL'}",
        f"fds  after warm-up {fd0:7.1f},     last {window:.0f} s {fd1:7.1f}     "
        f"({fd1 - fd0:+.1f}, limit ±{fd_slack}): {'ok' if fd_ok else 'FAIL'}",
    ]
    return rss_ok and fd_ok, lines


def verdict(args):
    tmp = args.tmp
    samples = read_samples(f"{tmp}/samples.tsv")
    print(f"routeid soak: {args.seconds} s")
    print(f"{'t (s)':>6} {'RSS (MiB)':>10} {'fds':>5}")
    for t, rss, fds in samples:
        print(f"{t:>6} {rss / 1024:>10.1f} {fds:>5}")
    flat, lines = flatness(read_samples(f"{tmp}/fine.tsv"), args.seconds, args.rss_tolerance, args.fd_slack)
    idle = dict((t, fds) for t, _, fds in read_samples(f"{tmp}/idle.tsv"))
    idle_ok = abs(idle.get("after", -99) - idle["before"]) <= args.idle_fd_slack
    lines.append(f"fds  idle before the load {idle['before']}, 6 s after it {idle.get('after', '?')} "
                 f"(limit ±{args.idle_fd_slack:.0f}): {'ok' if idle_ok else 'FAIL'}")
    flat = flat and idle_ok
    windows = read_events(tmp)
    log = read_log(tmp, windows)
    wrk = {name: read_wrk(f"{tmp}/wrk-{name}.txt") for name in ("sticky", "new", "upload")}
    try:
        slow = json.load(open(f"{tmp}/clients.json"))
    except (OSError, ValueError) as e:
        slow = {"slow clients": {"ok": 0, "fail": 1, "errors": [f"no summary: {e}"]}}
    unexpected = list(log["unexpected"])
    for name, w in wrk.items():
        print(f"wrk {name:7} {w['requests']:>9} requests, {w['non2xx']} non-2xx, {w['socket_errors']} socket errors")
        if w["socket_errors"] or w["requests"] <= 0:
            unexpected.append(f"wrk {name}: {w}")
    for name, s in slow.items():
        print(f"{name:11} {s['ok']:>5} ok, {s['fail']} failed")
        unexpected += [f"{name}: {e}" for e in s["errors"]] if s["fail"] else []
    print(f"restarts {sum(len(w) for w in windows.values())}, expected 5xx (member killed mid-request) "
          f"{log['expected']}")
    for msg, n in sorted(log["warnings"].items(), key=lambda kv: -kv[1]):
        print(f"  WARN x{n}: {msg}")
    print(*lines, sep="\n")
    if not args.alive:
        unexpected.append("routeid died or stopped answering /readyz")
    print(f"unexpected errors: {len(unexpected)}")
    for u in unexpected[:20]:
        print(f"  {u}")
    ok = flat and not unexpected
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("clients")
    c.add_argument("--proxy", required=True)
    c.add_argument("--seconds", type=int, required=True)
    c.add_argument("--header-timeout", type=float, required=True)
    v = sub.add_parser("verdict")
    v.add_argument("--tmp", required=True)
    v.add_argument("--seconds", type=int, required=True)
    v.add_argument("--alive", type=int, required=True)
    v.add_argument("--rss-tolerance", type=float, required=True)
    v.add_argument("--fd-slack", type=float, required=True)
    v.add_argument("--idle-fd-slack", type=float, required=True)
    args = p.parse_args()
    if args.cmd == "clients":
        asyncio.run(clients(args))
        return 0
    return verdict(args)


if __name__ == "__main__":
    sys.exit(main())
