"""What `kiln serve` refuses: hostile requests against a live server, with its memory and the
latency of /health while each one is handled.

    python benchmarks/hostile.py [--write-readme]

Trains a small digits model (mlp, one epoch), starts `kiln serve` on loopback (no token; a second
server with a token for the bearer case; `--body-timeout 5` so the slow-body case takes 5 s rather
than 30), then sends each case in turn. For each: the status code(s), seconds until answered, the
server's peak resident memory during the case (VmHWM from /proc, reset before each case through
/proc/PID/clear_refs) and the worst /health latency seen by a client polling it every 20 ms
meanwhile. Targets: every hostile case a JSON 4xx/503, /health under 100 ms, peak under 1 GB.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from readme_block import cpu_name, write_block

from kiln.deploy.load import free_port, multipart, wait_for_health

REPO = Path(__file__).resolve().parents[1]
KILN = [sys.executable, "-m", "kiln"]
TOKEN = "hostile-t0ken"
JSON = "application/json"


# Hostile bodies ---------------------------------------------------------------------------------


def png(width: int, height: int, channels: int = 1, rows: bool = True) -> bytes:
    """A grey (1) or RGB (3) PNG of zeros; rows=False leaves the pixel data out (a header that
    claims the size: what a decompression bomb looks like before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    colour = {1: 0, 3: 2}[channels]
    head = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0))
    packer = zlib.compressobj(9)
    line = b"\0" * (1 + width * channels)  # filter byte + the row
    data = b"".join(packer.compress(line) for _ in range(height)) if rows else b""
    data += packer.flush()
    return b"\x89PNG\r\n\x1a\n" + head + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def post(port: int, body: bytes, ctype: str, headers: dict | None = None, path="/predict"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": ctype, **(headers or {})})
        response = conn.getresponse()
        payload = response.read()
        return response.status, payload
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}", b""
    finally:
        conn.close()


def get(port: int, path: str, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def slow_body(port: int, seconds: float = 60) -> tuple[int | str, bytes]:
    """Headers, then one byte a second of a 100-byte JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=seconds + 30) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                  b"\r\nContent-Length: 100\r\n\r\n")  # fmt: skip
        s.settimeout(1.0)
        for _ in range(int(seconds)):
            try:
                s.sendall(b" ")
                answer = s.recv(65536)
                if answer:
                    return int(answer.split(b" ", 2)[1]), answer
            except TimeoutError:
                continue
            except OSError:
                break
    return "no answer", b""


def concurrent(n: int, send: Callable[[], tuple]) -> tuple[str, bytes]:
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda _: send(), range(n)))
    counts = Counter(status for status, _ in results)
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=str)), results[0][1]


def cases(port: int, token_port: int) -> list[tuple[str, Callable[[], tuple]]]:
    files = lambda data: multipart([("x.png", data)])  # noqa: E731
    thin, tall = files(png(10_000_000, 1)), files(png(1, 40_000_000))
    bomb = files(png(10_000, 10_000, rows=False))
    big_rgb = files(png(8_000, 5_000, 3))
    empties = b'{"images": [' + b'"",' * 3_300_000 + b'""]}'
    deep = b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    nested = b'{"images": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"
    boundary = "b" * 30
    near = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.png\""
            "\r\nContent-Type: image/png\r\n\r\n").encode() + b"\r\n--" * 2_300_000  # fmt: skip
    return [
        ("PNG 10,000,000 x 1 (19.5 KB file)", lambda: post(port, *thin)),
        ("PNG 1 x 40,000,000 (78 KB file)", lambda: post(port, *tall)),
        ("PNG header claiming 10,000 x 10,000 (100 MP)", lambda: post(port, *bomb)),
        ("PNG 8,000 x 5,000 RGB (40 MP: allowed, decoded)", lambda: post(port, *big_rgb)),
        ("40 of those at once", lambda: concurrent(40, lambda: post(port, *big_rgb))),
        ("JSON: 3.3 million empty strings (9.9 MB)", lambda: post(port, empties, JSON)),
        ("JSON: '[' x 100,000", lambda: post(port, deep, JSON)),
        ("JSON: nested 5,000 deep", lambda: post(port, nested, JSON)),
        ("body of 11 MB", lambda: post(port, b"0" * (11 << 20), JSON)),
        (
            "multipart: 9 MB of almost-boundaries",
            lambda: post(port, near, f"multipart/form-data; boundary={boundary}"),
        ),  # fmt: skip
        ("body sent at 1 byte/s", lambda: slow_body(port)),
        (
            "Host: evil.example (no token)",
            lambda: get(port, "/metadata", {"Host": "evil.example:8000"}),
        ),  # fmt: skip
        (
            "'bearer' in lower case (token server)",
            lambda: get(token_port, "/metadata", {"Authorization": f"bearer {TOKEN}"}),
        ),  # fmt: skip
        (
            "wrong token (token server)",
            lambda: get(token_port, "/metadata", {"Authorization": "Bearer nope"}),
        ),  # fmt: skip
    ]


# Watching the server ----------------------------------------------------------------------------


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class HealthWatch:
    """Polls GET /health every 20 ms from a process of its own (so the clients' threads in this
    one do not delay it) on a fresh connection each time; `worst` is the slowest answer (ms)."""

    def __init__(self, port: int):
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self._worst = context.Value("d", 0.0)
        self._stop = context.Event()
        self._process = context.Process(target=_poll, args=(port, self._worst, self._stop))
        self.worst = 0.0

    def __enter__(self) -> HealthWatch:
        self._process.start()
        time.sleep(0.1)  # polling before the case starts
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._process.join()
        self.worst = self._worst.value


def _poll(port: int, worst, stop) -> None:
    while not stop.is_set():
        began = time.perf_counter()
        try:
            get(port, "/health")
        except OSError:
            pass
        worst.value = max(worst.value, (time.perf_counter() - began) * 1000)
        time.sleep(0.02)


def start_server(run: Path, cwd: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = open(cwd / f"serve-{port}.log", "w")  # noqa: SIM115 (the server's, while it runs)
    server = subprocess.Popen([*KILN, "serve", run, "--port", str(port), *extra], cwd=cwd,
                              stdout=log, stderr=log)  # fmt: skip
    if not wait_for_health(f"http://127.0.0.1:{port}", server):
        raise SystemExit("kiln serve did not come up")
    return server, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-readme", action="store_true", help="update README.md's table")
    parser.add_argument("--only", default="", help="run the cases whose name holds this text")
    parser.add_argument("--serve-args", default="", help="more options for kiln serve")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kiln-hostile-"))
    trained = subprocess.run([*KILN, "train", "epochs=1", "model=mlp", "run.report=false",
                              "name=digits"], cwd=work, capture_output=True, text=True)  # fmt: skip
    if trained.returncode != 0:
        raise SystemExit(trained.stderr)
    run = work / "runs" / "digits"
    server, port = start_server(run, work, "--body-timeout", "5", *args.serve_args.split())
    guarded, token_port = start_server(run, work, "--token", TOKEN)
    rows = []
    try:
        post(port, *multipart([("warm.png", png(8, 8))]))  # the first request pays set-ups
        idle = peak_mb(server.pid)
        for name, send in cases(port, token_port):
            if args.only not in name:
                continue
            pid = guarded.pid if "token server" in name else server.pid
            reset_peak(pid)
            with HealthWatch(port) as watch:
                began = time.perf_counter()
                status, payload = send()
                seconds = time.perf_counter() - began
            detail = ""
            try:
                detail = json.loads(payload).get("detail", "") if payload else ""
            except (ValueError, AttributeError):
                detail = payload[:60].decode("latin-1")
            time.sleep(0.2)  # the server has finished with it
            rows.append((name, status, seconds, peak_mb(pid), watch.worst, detail))
            shown = f"{name}: {status} in {seconds:.2f} s, peak {rows[-1][3]:.0f} MB, "
            print(f"{shown}/health worst {watch.worst:.0f} ms  {str(detail)[:90]}", flush=True)
    finally:
        for p in (server, guarded):
            p.terminate()
            p.wait(timeout=30)
    table = [
        "| request | answer | seconds | server peak memory | worst /health |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {n} | {s} | {t:.2f} | {m:.0f} MB | {h:.0f} ms |" for n, s, t, m, h, _ in rows),
    ]
    text = "\n".join([
        f"Server at rest: {idle:.0f} MB resident (PyTorch and the model). Measured with "
        f"`python benchmarks/hostile.py` on {cpu_name()} ({os.cpu_count()} cores), clients and "
        "server sharing them.", "", *table,
    ])  # fmt: skip
    print(text)
    print(f"Server logs: {work}/serve-*.log")
    if args.write_readme:
        write_block("hostile", text, REPO / "README.md")


if __name__ == "__main__":
    main()
