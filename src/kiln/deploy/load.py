"""A bounded load test for `kiln serve`: N clients, each with one keep-alive connection, posting
the same request back to back for a fixed time. Used by the tests (zero errors) and by
benchmarks/serve.py (requests/s, p50/p99 latency)."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    clients: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies_ms) + len(self.errors)

    @property
    def per_second(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


def multipart(files: list[tuple[str, bytes]], field_name: str = "files") -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request carrying image files."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; '
            f'filename="{name}"\r\nContent-Type: image/png\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def run_load(
    url: str,
    body: bytes,
    content_type: str,
    clients: int = 50,
    seconds: float = 20.0,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """POST `body` to `url` from `clients` threads until `seconds` have passed."""
    parts = urlsplit(url)
    result = LoadResult(clients, seconds)
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    deadline = [0.0]
    sent = {"Content-Type": content_type, **(headers or {})}

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        start.wait()
        mine, problems = [], []
        while time.perf_counter() < deadline[0]:
            began = time.perf_counter()
            try:
                conn.request("POST", parts.path or "/", body=body, headers=sent)
                response = conn.getresponse()
                payload = response.read()
                if response.status == 200:
                    mine.append((time.perf_counter() - began) * 1000)
                else:
                    problems.append(f"HTTP {response.status}: {payload[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                problems.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.close()
        with lock:
            result.latencies_ms += mine
            result.errors += problems

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    start.wait()
    for t in threads:
        t.join()
    return result


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, process=None, seconds: float = 60.0) -> bool:
    """True once GET url/health answers; False if `process` exits or time runs out."""
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            return True
        except OSError:
            time.sleep(0.1)
    return False
