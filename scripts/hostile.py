#!/usr/bin/env python3
"""The hostile-client campaign against a running keygate (see scripts/hostile.sh).

Usage: hostile.py PROXY_PORT ADMIN_PORT API_KEY KEYGATE_PID UPSTREAM_LOG [SOAK_SECONDS [BODY_LOG]]

The module under /a is nginx (UPSTREAM_LOG: its access log); the one under /b is
scripts/body_upstream.py, which reads each body to its end before answering and logs
`METHOD PATH bytes` to BODY_LOG: the body probes go there, so a broken or stalled body
is seen by keygate while the upstream still waits for it.

Prints one line per probe: `probe<TAB>verdict<TAB>figure`. The verdict is `ok` when
keygate behaved as documented (docs/hostile.md), `FAIL` otherwise; the exit code is
the number of FAIL lines. Everything goes to 127.0.0.x; other client addresses are
127.0.0.2 … so per-address limits can be exercised from one machine.
"""
import asyncio
import json
import os
import socket
import statistics
import sys
import time

import h2.config
import h2.connection
import h2.events
import hpack

PROXY, ADMIN, KEY, PID, UPLOG = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
SOAK = int(sys.argv[6]) if len(sys.argv) > 6 else 60
BODYLOG = sys.argv[7] if len(sys.argv) > 7 else None
HOST = "127.0.0.1"
FAILS = 0


def report(probe, ok, figure):
    global FAILS
    FAILS += 0 if ok else 1
    print(f"{probe}\t{'ok' if ok else 'FAIL'}\t{figure}", flush=True)


def rss_mib():
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def open_from(src, port=PROXY):
    """A connection to `port` from loopback address `src` (e.g. 127.0.0.2)."""
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((src, 0))
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (HOST, port))
    return await asyncio.open_connection(sock=sock)


async def request(raw, src=HOST, port=PROXY, timeout=10.0):
    """Sends raw bytes, reads until close; returns (status, text)."""
    r, w = await open_from(src, port)
    w.write(raw)
    await w.drain()
    try:
        data = await asyncio.wait_for(r.read(), timeout)
    except (asyncio.TimeoutError, ConnectionError):
        data = b""
    w.close()
    text = data.decode("latin-1")
    try:
        status = int(text.split(" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    return status, text


def get_req(path="/a/x", key=KEY, extra=""):
    return f"GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: ApiKey {key}\r\n{extra}Connection: close\r\n\r\n".encode()


async def legit_latencies(n=40, src="127.0.0.1"):
    """n sequential authenticated GETs; (successes, p50 ms, max ms)."""
    lat, ok = [], 0
    for _ in range(n):
        t = time.monotonic()
        status, _ = await request(get_req(), src=src, timeout=10)
        lat.append((time.monotonic() - t) * 1000)
        ok += status == 200
    return ok, statistics.median(lat), max(lat)


async def hold_open(n, src, payload, port=PROXY):
    """Opens n connections from src sending `payload`; (held, refused, writers)."""
    held, refused, writers = 0, 0, []
    for _ in range(n):
        try:
            r, w = await open_from(src, port)
            w.write(payload)
            await w.drain()
            try:
                data = await asyncio.wait_for(r.read(1), 0.02)
                if data == b"":
                    refused += 1
                    w.close()
                    continue
            except asyncio.TimeoutError:
                pass
            held += 1
            writers.append(w)
        except (ConnectionError, OSError):
            refused += 1
    return held, refused, writers


async def probe_slowloris():
    held, refused, ws = await hold_open(1000, "127.0.0.2", b"GET /a HTTP/1.1\r\nHost: gw\r\nX-a: ")
    ok, p50, mx = await legit_latencies()
    for w in ws:
        w.close()
    report("slowloris-1000-conns-one-address", ok == 40 and held <= 256,
           f"held {held}, refused at once {refused}; others: {ok}/40 ok, p50 {p50:.1f} ms, max {mx:.1f} ms")


async def probe_slow_post():
    head = f"POST /a/x HTTP/1.1\r\nHost: gw\r\nAuthorization: ApiKey {KEY}\r\nContent-Length: 100000\r\n\r\nx".encode()
    held, refused, ws = await hold_open(300, "127.0.0.3", head)

    async def trickle():
        for _ in range(5):
            await asyncio.sleep(1)
            for w in ws:
                try:
                    w.write(b"x")
                except Exception:
                    pass
    t = asyncio.create_task(trickle())
    ok, p50, mx = await legit_latencies()
    t.cancel()
    for w in ws:
        w.close()
    report("slow-post-300-valid-token", ok == 40, f"held {held}, refused {refused}; others: {ok}/40 ok, p50 {p50:.1f} ms, max {mx:.1f} ms")


async def probe_idle_admin():
    ws = []
    for i in range(400):
        src = f"127.0.1.{i // 20 + 1}"  # 20 per address, under admin.max_connections_per_ip
        try:
            _, w = await open_from(src, ADMIN)
            ws.append(w)
        except OSError:
            pass
    lat = []
    ok = 0
    for _ in range(10):
        t = time.monotonic()
        status, _ = await request(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", port=ADMIN, timeout=10)
        lat.append((time.monotonic() - t) * 1000)
        ok += status == 200
    for w in ws:
        w.close()
    report("idle-admin-400-conns", ok == 10, f"{len(ws)} idle connections; /healthz {ok}/10 ok, max {max(lat):.1f} ms")


def body_log_lines(path):
    """Lines of the body-reading upstream's log that mention `path`."""
    if not BODYLOG or not os.path.exists(BODYLOG):
        return []
    with open(BODYLOG) as f:
        return [line for line in f if f" {path} " in line]


async def probe_stalled_body():
    # To the body-reading upstream (/b): it waits for the 100 bytes, so only keygate's
    # body_read_timeout can end the exchange; the answer must be the client's 408, and
    # the upstream must never see a complete request.
    t = time.monotonic()
    status, text = await request(
        f"POST /b/stalled HTTP/1.1\r\nHost: gw\r\nAuthorization: ApiKey {KEY}\r\nContent-Length: 100\r\n\r\nabc".encode(), timeout=60)
    el = time.monotonic() - t
    completed = len(body_log_lines("/b/stalled"))
    report("stalled-body", status == 408 and "REQ_TIMEOUT" in text and completed == 0 and BODYLOG is not None,
           f"{status} after {el:.1f} s (body_read_timeout 3s); upstream saw {completed} complete requests")


async def probe_malformed_chunk():
    # To the body-reading upstream (/b), which is still reading when the framing error
    # comes: keygate must answer the client's 400, never the upstream's 502. The last
    # body is well-formed but its chunk extensions (20 KB) pass hyper's 16 KiB per-body
    # limit.
    statuses = {}
    for body in [b"zz\r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n", b"-1\r\nx\r\n0\r\n\r\n",
                 b"ffffffffffffffffff\r\nx\r\n0\r\n\r\n",
                 b"".join(b"1;" + b"e" * 4000 + b"\r\nx\r\n" for _ in range(5)) + b"0\r\n\r\n"]:
        status, text = await request(
            f"POST /b/chunked HTTP/1.1\r\nHost: gw\r\nAuthorization: ApiKey {KEY}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode() + body)
        key = f"{status} {'REQ_MALFORMED' if 'REQ_MALFORMED' in text else ''}".strip()
        statuses[key] = statuses.get(key, 0) + 1
    completed = len(body_log_lines("/b/chunked"))
    report("malformed-chunked-bodies", set(statuses) == {"400 REQ_MALFORMED"} and completed == 0 and BODYLOG is not None,
           f"5 bodies: {statuses}; upstream saw {completed} complete bodies")


SMUGGLED = "/a/SMUGGLED"


def smuggling_variants():
    k = f"Authorization: ApiKey {KEY}\r\n"
    # The hidden request carries no key: keygate answers it 401 itself, so it reaches
    # the upstream only if keygate and the upstream disagree on where a request ends.
    inner = f"GET {SMUGGLED} HTTP/1.1\r\nHost: gw\r\n\r\n"
    n = len(inner)
    chunked = f"0\r\n\r\n{inner}"
    v = {
        "CL.TE": f"POST /a/x HTTP/1.1\r\nHost: gw\r\n{k}Content-Length: {len(chunked)}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}",
        "TE.CL": f"POST /a/x HTTP/1.1\r\nHost: gw\r\n{k}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{n:x}\r\n{inner}\r\n0\r\n\r\n",
        "TE-xchunked": f"POST /a/x HTTP/1.1\r\nHost: gw\r\n{k}Content-Length: {len(chunked)}\r\nTransfer-Encoding: xchunked\r\n\r\n{chunked}",
        "TE-space-before-colon": f"POST /a/x HTTP/1.1\r\nHost: gw\r\n{k}Content-Length: {len(chunked)}\r\nTransfer-Encoding : chunked\r\n\r\n{chunked}",
        "TE-tab": f"POST /a/x HTTP/1.1\r\nHost: gw\r\n{k}Content-Length: {len(chunked)}\r\nTransfer-Encoding:\tchunked\r\n\r\n{chunked}",
        "TE-chunked-identity": f"POST /a/x HTTP/1.1\r\nHost: gw\r\n{k}Transfer-Encoding: chunked, identity\r\n\r\n{chunked}",
        "TE-identity-chunked": f"POST /a/x HTTP/1.1\r\nHost: gw\r\n{k}Transfer-Encoding: identity, chunked\r\n\r\n{chunked}",
        "TE-twice": f"POST /a/x HTTP/1.1\r\nHost: gw\r\n{k}Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n{chunked}",
        "TE-obs-fold": f"POST /a/x HTTP/1.1\r\nHost: gw\r\n{k}Transfer-Encoding:\r\n chunked\r\nContent-Length: {len(chunked)}\r\n\r\n{chunked}",
        "TE-in-HTTP/1.0": f"POST /a/x HTTP/1.0\r\nHost: gw\r\n{k}Transfer-Encoding: chunked\r\nContent-Length: {len(chunked)}\r\n\r\n{chunked}",
        "CL-CL-differ": f"POST /a/x HTTP/1.1\r\nHost: gw\r\n{k}Content-Length: 0\r\nContent-Length: {n}\r\n\r\n{inner}",
        "CL-list": f"POST /a/x HTTP/1.1\r\nHost: gw\r\n{k}Content-Length: 0, {n}\r\n\r\n{inner}",
        "CL-plus": f"POST /a/x HTTP/1.1\r\nHost: gw\r\n{k}Content-Length: +{n}\r\n\r\n{inner}",
        "CL-negative": f"POST /a/x HTTP/1.1\r\nHost: gw\r\n{k}Content-Length: -1\r\n\r\n{inner}",
        "CL-hex": f"POST /a/x HTTP/1.1\r\nHost: gw\r\n{k}Content-Length: 0x{n:x}\r\n\r\n{inner}",
        "CL-huge": f"POST /a/x HTTP/1.1\r\nHost: gw\r\n{k}Content-Length: 99999999999999999999999\r\n\r\n{inner}",
        "bare-LF-head": f"POST /a/x HTTP/1.1\nHost: gw\n{k.strip()}\nContent-Length: {len(chunked)}\nTransfer-Encoding: chunked\n\n{chunked}",
        "chunk-ext-LF": f"POST /a/x HTTP/1.1\r\nHost: gw\r\n{k}Transfer-Encoding: chunked\r\n\r\n2;\n\r\nxx\r\n0\r\n\r\n{inner}",
        "chunk-size-overflow": f"POST /a/x HTTP/1.1\r\nHost: gw\r\n{k}Transfer-Encoding: chunked\r\n\r\n10000000000000001\r\nx\r\n0\r\n\r\n{inner}",
        "two-Host": f"GET /a/x HTTP/1.1\r\nHost: gw\r\nHost: {SMUGGLED}\r\n{k}\r\n",
        "no-Host": f"GET {SMUGGLED} HTTP/1.1\r\n{k}\r\n",
        "absolute-form": f"GET http://evil{SMUGGLED} HTTP/1.1\r\nHost: gw\r\n{k}\r\n",
        "header-NUL": f"GET /a/x HTTP/1.1\r\nHost: gw\r\n{k}X-A: a\x00b\r\n\r\n",
        "space-in-target": f"GET /a/x {SMUGGLED} HTTP/1.1\r\nHost: gw\r\n{k}\r\n",
        "Connection-drops-auth": f"GET /a/x HTTP/1.1\r\nHost: gw\r\n{k}Connection: authorization, x-keygate-token-id\r\n\r\n",
        "upgrade-h2c": f"GET /a/x HTTP/1.1\r\nHost: gw\r\n{k}Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    }
    return v


async def probe_smuggling():
    statuses = {}
    for name, raw in smuggling_variants().items():
        status, _ = await request(raw.encode("latin-1"), timeout=1.5)
        statuses[name] = status
    await asyncio.sleep(0.5)
    with open(UPLOG, "rb") as f:
        reached = f.read().count(SMUGGLED.encode())
    codes = {}
    for s in statuses.values():
        codes[s] = codes.get(s, 0) + 1
    report("http1-smuggling-variants", reached == 0,
           f"{len(statuses)} variants, smuggled request reached the upstream {reached} times; statuses {dict(sorted(codes.items()))}")


# --- HTTP/2 ---------------------------------------------------------------------------

def h2_conn():
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.initiate_connection()
    return c


def headers(path="/a/x"):
    return [(":method", "GET"), (":scheme", "http"), (":authority", "gw"), (":path", path),
            ("authorization", f"ApiKey {KEY}")]


async def h2_read_until_close(r, limit_s):
    """Reads until EOF, reset or limit; (bytes read, saw GOAWAY, closed). A TCP reset
    (keygate closing with unread data in its buffer) counts as closed."""
    total, goaway, end = 0, False, time.monotonic() + limit_s
    buf = b""
    while time.monotonic() < end:
        try:
            data = await asyncio.wait_for(r.read(65536), max(0.01, end - time.monotonic()))
        except asyncio.TimeoutError:
            return total, goaway, False
        except ConnectionError:
            return total, goaway, True
        if not data:
            return total, goaway, True
        total += len(data)
        buf = (buf + data)[-65536:]
        # Frame type 7 = GOAWAY; a cheap scan of frame headers is enough here.
        i = 0
        while i + 9 <= len(buf):
            ln = int.from_bytes(buf[i:i + 3], "big")
            if buf[i + 3] == 7:
                goaway = True
            i += 9 + ln
    return total, goaway, False


async def probe_rapid_reset():
    r, w = await asyncio.open_connection(HOST, PROXY)
    c = h2_conn()
    w.write(c.data_to_send())
    n, before, t = 0, rss_mib(), time.monotonic()
    try:
        for sid in range(1, 2 * 20000, 2):
            c.send_headers(sid, headers(), end_stream=True)
            c.reset_stream(sid)
            n += 1
            if n % 500 == 0:
                w.write(c.data_to_send())
                await w.drain()
        w.write(c.data_to_send())
        await w.drain()
    except (ConnectionError, h2.exceptions.ProtocolError):
        pass
    _, goaway, closed = await h2_read_until_close(r, 5)
    el = time.monotonic() - t
    w.close()
    ok, p50, _ = await legit_latencies(10)
    report("h2-rapid-reset", ok == 10,
           f"{n} HEADERS+RST_STREAM in {el:.1f} s, GOAWAY {goaway}, closed {closed}; RSS {before:.0f}->{rss_mib():.0f} MiB; others {ok}/10 ok p50 {p50:.1f} ms")


def frame(ftype, flags, sid, payload):
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


async def probe_continuation_flood():
    r, w = await asyncio.open_connection(HOST, PROXY)
    c = h2_conn()
    w.write(c.data_to_send())
    enc = hpack.Encoder()
    first = enc.encode(headers())
    w.write(frame(1, 0, 1, first))  # HEADERS without END_HEADERS
    sent, t, how = 0, time.monotonic(), "all sent"
    block = enc.encode([("x-flood", "a" * 4000)])
    try:
        for _ in range(20000):  # ~80 MB of CONTINUATION if nobody stops us
            if w.is_closing():
                raise ConnectionResetError("closed by keygate")
            w.write(frame(9, 0, 1, block))
            sent += len(block)
            if sent % (1 << 16) < len(block):
                await asyncio.wait_for(w.drain(), 5)
    except ConnectionError as e:
        how = f"write failed: {type(e).__name__}"  # a reset is keygate closing: a pass
    except asyncio.TimeoutError:
        how = "writes blocked 5 s"
    _, goaway, closed = await h2_read_until_close(r, 3)
    closed = closed or how.startswith("write failed")
    w.close()
    ok, _, _ = await legit_latencies(5)
    report("h2-continuation-flood", (goaway or closed) and ok == 5,
           f"{sent / 1e6:.1f} MB sent in {time.monotonic() - t:.1f} s ({how}); GOAWAY {goaway}, closed {closed}; RSS {rss_mib():.0f} MiB; others {ok}/5 ok")


async def probe_hpack_bomb():
    r, w = await asyncio.open_connection(HOST, PROXY)
    c = h2_conn()
    w.write(c.data_to_send())
    # One 4 KB header into the dynamic table, then 4000 one-byte references to it:
    # ~16 MB decoded from ~4 KB on the wire.
    enc = hpack.Encoder()
    block = enc.encode(headers() + [("x-bomb", "b" * 4000)])
    block += bytes([0x80 | 62]) * 4000  # index 62: the newest dynamic-table entry
    w.write(frame(1, 0x4 | 0x1, 1, block))
    await w.drain()
    _, goaway, closed = await h2_read_until_close(r, 3)
    w.close()
    ok, _, _ = await legit_latencies(5)
    report("hpack-bomb", ok == 5, f"{len(block)} B block decoding to ~16 MB: GOAWAY {goaway}, closed {closed}; RSS {rss_mib():.0f} MiB; others {ok}/5 ok")


async def probe_stream_flood():
    r, w = await asyncio.open_connection(HOST, PROXY)
    c = h2_conn()
    w.write(c.data_to_send())
    enc = hpack.Encoder()
    # 1000 requests opened at once on one connection, bodies never sent (streams stay
    # open); keygate allows 256 concurrent streams and must refuse the rest.
    for sid in range(1, 2000, 2):
        w.write(frame(1, 0x4, sid, enc.encode(headers("/a/x"))))
    await w.drain()
    resets, goaway, buf, t = 0, False, b"", time.monotonic()
    while time.monotonic() - t < 3:
        try:
            data = await asyncio.wait_for(r.read(65536), 0.5)
        except asyncio.TimeoutError:
            continue
        if not data:
            break
        buf += data
        while len(buf) >= 9:
            ln = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + ln:
                break
            resets += buf[3] == 3
            goaway |= buf[3] == 7
            buf = buf[9 + ln:]
    w.close()
    ok, _, _ = await legit_latencies(5)
    report("h2-stream-flood", ok == 5,
           f"1000 streams opened at once: {resets} refused (RST_STREAM), GOAWAY {goaway}; RSS {rss_mib():.0f} MiB; others {ok}/5 ok")


async def probe_soak():
    conns, stop = 256, time.monotonic() + SOAK
    counts = {"ok": 0, "err": 0}
    samples = []
    req = f"GET /a/x HTTP/1.1\r\nHost: gw\r\nAuthorization: ApiKey {KEY}\r\n\r\n".encode()

    async def worker(i):
        src = f"127.0.2.{i // 200 + 1}"
        try:
            r, w = await open_from(src)
        except OSError:
            counts["err"] += 1
            return
        while time.monotonic() < stop:
            w.write(req)
            try:
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await r.readexactly(length)
                counts["ok" if head.startswith(b"HTTP/1.1 200") else "err"] += 1
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                counts["err"] += 1
                w.close()
                try:
                    r, w = await open_from(src)
                except OSError:
                    return
        w.close()

    async def sampler():
        while time.monotonic() < stop:
            samples.append(round(rss_mib()))
            await asyncio.sleep(5)

    t = time.monotonic()
    await asyncio.gather(sampler(), *(worker(i) for i in range(conns)))
    el = time.monotonic() - t
    idle_after = rss_mib()
    report(f"soak-{SOAK}s-256-conns", counts["err"] == 0,
           f"{counts['ok']} ok ({counts['ok'] / el:.0f} req/s), {counts['err']} errors; RSS MiB every 5 s: {samples}; after: {idle_after:.0f}")


async def main():
    only = os.environ.get("PROBES", "").split(",") if os.environ.get("PROBES") else None
    probes = [
        ("smuggling", probe_smuggling), ("malformed", probe_malformed_chunk),
        ("slowloris", probe_slowloris), ("slowpost", probe_slow_post), ("idleadmin", probe_idle_admin),
        ("stalled", probe_stalled_body), ("rapidreset", probe_rapid_reset),
        ("continuation", probe_continuation_flood), ("hpack", probe_hpack_bomb),
        ("streams", probe_stream_flood), ("soak", probe_soak),
    ]
    print(f"rss-at-start\tok\t{rss_mib():.0f} MiB", flush=True)
    for name, p in probes:
        if only and name not in only:
            continue
        try:
            await p()
        except Exception as e:  # a probe that crashes is a finding too
            report(name, False, f"probe error: {e!r}")
        await asyncio.sleep(1)


asyncio.run(main())
sys.exit(FAILS)
