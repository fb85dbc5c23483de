"""Real S3-compatible services for tests: a ``moto_server`` process and a fault-injecting proxy.

Why a process and a proxy rather than moto's in-process decorators: the code under test must
meet the real failure modes: a refused connection while the server restarts, a 503 SlowDown on
the wire, a connection dropped mid-request. Those only happen across a socket.

Everything listens on 127.0.0.1, on a free port, and is stopped by whoever started it (the
fixtures in ``tests/conftest.py``). moto keeps its state in memory: a restarted server is empty.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import botocore.config


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _moto_command(port: int) -> list[str]:
    exe = Path(sys.executable).with_name("moto_server")
    if exe.exists():
        return [str(exe), "-H", "127.0.0.1", "-p", str(port)]
    found = shutil.which("moto_server")
    if found:
        return [found, "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


class MotoServer:
    """A ``moto_server`` child process on 127.0.0.1.

    ``restart()`` keeps the port (so clients configured with ``endpoint_url`` reconnect by
    themselves) but, as with any moto restart, loses every bucket and object.
    """

    def __init__(self, port: int | None = None, startup_timeout_s: float = 30.0) -> None:
        self.port = port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
            prefix="moto-server-", suffix=".log", delete=False
        )

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen(
            _moto_command(self.port),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Polls until the server answers HTTP; raises with the server's log tail if not."""
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.endpoint_url + "/", timeout=1.0) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"moto_server on port {self.port} did not start:\n{self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        self._log.flush()
        try:
            return Path(self._log.name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def restart(self, downtime_s: float = 0.0) -> None:
        """Stops the server, waits ``downtime_s``, starts it again on the same port (empty)."""
        self.stop()
        time.sleep(downtime_s)
        self.start()

    def close(self) -> None:
        """Stops the server and removes its log."""
        self.stop()
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_client(endpoint_url: str, **config: Any) -> Any:
    """A boto3 S3 client for a test server; test-side only, with botocore retries left on."""
    return boto3.session.Session(region_name="us-east-1").client(
        "s3",
        endpoint_url=endpoint_url,
        config=botocore.config.Config(s3={"addressing_style": "path"}, **config),
    )


def put_objects(client: Any, bucket: str, objects: dict[str, bytes]) -> None:
    """Uploads ``objects`` (key -> bytes) to ``bucket``."""
    for key, data in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)


def empty_bucket(client: Any, bucket: str, delete: bool = False) -> None:
    """Deletes every object of ``bucket`` (and the bucket if ``delete``); a missing one is fine."""
    try:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        if delete:
            client.delete_bucket(Bucket=bucket)
    except client.exceptions.NoSuchBucket:
        pass


# -- fault injection ---------------------------------------------------------------------------


@dataclass
class _Fault:
    kind: str  # "status" | "drop" | "delay" | "stall" | "truncate"
    remaining: int  # -1: until cleared
    status: int = 503
    code: str = "SlowDown"
    delay_s: float = 0.0
    match: re.Pattern[str] | None = None


_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}


class FaultProxy:
    """An HTTP proxy in front of an S3 server that misbehaves on demand.

    Point the code under test at ``proxy.endpoint_url``; by default every request is forwarded
    unchanged. Faults are queued and consumed by the next matching requests:

    - ``fail_next(n, status=503, code="SlowDown")``: answer with an S3 XML error;
    - ``drop_next(n)``: close the connection without answering (a reset, as botocore sees it);
    - ``delay_next(n, seconds)``: hold the request before forwarding (trips read timeouts);
    - ``n=-1`` keeps the fault on until ``clear()``.

    ``match`` is a regex searched in ``"METHOD /path?query"``, e.g. ``r"^GET /bucket/.+"`` hits
    object GETs but not ``GET /bucket?list-type=2`` listings. Counters: ``requests`` (all),
    ``faults_served``, ``forwarded``, and ``ops``: requests by S3 operation
    (:func:`request_op`: ``LIST``, ``GET``, ``HEAD``, ``PUT``...), the server's request counters.
    """

    def __init__(self, upstream: str) -> None:
        parts = upstream.removeprefix("http://").rstrip("/")
        host, _, port = parts.partition(":")
        self.upstream_host = host
        self.upstream_port = int(port or 80)
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self.requests = 0
        self.ops: Counter[str] = Counter()
        self.faults_served = 0
        self.forwarded = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()

    @property
    def endpoint_url(self) -> str:
        assert self._server is not None, "proxy not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- fault control ------------------------------------------------------------------------
    def _add(self, fault: _Fault, match: str | None) -> None:
        fault.match = re.compile(match) if match else None
        with self._lock:
            self._faults.append(fault)

    def fail_next(
        self, n: int, status: int = 503, code: str = "SlowDown", match: str | None = None
    ) -> None:
        self._add(_Fault("status", n, status=status, code=code), match)

    def drop_next(self, n: int, match: str | None = None) -> None:
        self._add(_Fault("drop", n), match)

    def truncate_next(self, n: int, match: str | None = None) -> None:
        """The next ``n`` matching answers send their headers and half the body, then drop the
        connection: a body that breaks off while it is read (botocore does not retry that)."""
        self._add(_Fault("truncate", n), match)

    def delay_next(self, n: int, seconds: float, match: str | None = None) -> None:
        self._add(_Fault("delay", n, delay_s=seconds), match)

    def stall_next(self, n: int, seconds: float, match: str | None = None) -> _Fault:
        """The next ``n`` matching requests hang for ``seconds``, then their connection drops
        without reaching the server (a partition). The returned fault's ``remaining`` reaches
        0 once the last of them has arrived: wait on it to act while they hang."""
        fault = _Fault("stall", n, delay_s=seconds)
        self._add(fault, match)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, line: str) -> _Fault | None:
        with self._lock:
            self.requests += 1
            self.ops[request_op(line)] += 1
            for f in self._faults:
                if f.remaining != 0 and (f.match is None or f.match.search(line)):
                    if f.remaining > 0:
                        f.remaining -= 1
                    if f.kind != "delay":
                        self.faults_served += 1
                    return f
            return None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        proxy = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def process_request(self, request: Any, client_address: Any) -> None:
                t = threading.Thread(
                    target=self.process_request_thread, args=(request, client_address),
                    daemon=True,
                )
                with proxy._lock:
                    proxy._conns.add(request)
                    proxy._handler_threads.add(t)
                t.start()

            def shutdown_request(self, request: Any) -> None:
                with proxy._lock:
                    proxy._conns.discard(request)
                    proxy._handler_threads.discard(threading.current_thread())
                super().shutdown_request(request)

        self._server = Server(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops accepting, closes every open client connection, joins every thread."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
            threads = list(self._handler_threads)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def request_op(line: str) -> str:
    """The S3 operation of a request line ``"METHOD /path?query"``, as price lists name it: a
    GET with ``list-type`` in its query is a ``LIST`` (ListObjectsV2), other methods are
    themselves."""
    method, _, target = line.partition(" ")
    query = target.partition("?")[2]
    if method == "GET" and "list-type=" in query:
        return "LIST"
    return method


def _error_body(status: int, code: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>injected {status} {code}</Message>"
        "<RequestId>fault-proxy</RequestId></Error>"
    ).encode()


def _make_handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _handle(self) -> None:
            body = self._read_body()
            fault = proxy._take_fault(f"{self.command} {self.path}")
            if fault is not None and fault.kind == "stall":
                time.sleep(fault.delay_s)
            if fault is not None and fault.kind in ("drop", "stall"):
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault is not None and fault.kind == "status":
                payload = b"" if self.command == "HEAD" else _error_body(fault.status, fault.code)
                self.send_response(fault.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            if fault is not None and fault.kind == "delay":
                time.sleep(fault.delay_s)
            self._forward(body, truncate=fault is not None and fault.kind == "truncate")

        def _forward(self, body: bytes, truncate: bool = False) -> None:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
            try:
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except OSError:
                # Upstream down: look like it to the client (connection dropped).
                self.close_connection = True
                return
            finally:
                conn.close()
            with proxy._lock:
                proxy.forwarded += 1
            self.send_response_only(resp.status, resp.reason)
            head = self.command == "HEAD"  # keeps the object's Content-Length, sends no body
            for k, v in resp.getheaders():
                if k.lower() not in _HOP_BY_HOP and (head or k.lower() != "content-length"):
                    self.send_header(k, v)
            if not head:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data[: len(data) // 2] if truncate else data)
            if truncate:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815

    return Handler
