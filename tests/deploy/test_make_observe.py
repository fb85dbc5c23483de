"""`make observe`: a Prometheus on 127.0.0.1 at the printed address, and its queries parse."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from tests.deploy.panels import REPO
from tests.tools import prometheus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_make_observe_starts_prometheus_and_prints_working_queries(tmp_path: Path) -> None:
    prometheus()
    if shutil.which("make") is None:
        pytest.skip("make not found: install it (apt-get install make) to run this check")
    port = free_port()
    out = tmp_path / "out.txt"
    with out.open("w") as sink:
        make = subprocess.Popen(["make", "-s", "observe", f"PROM_PORT={port}",
                                 f"PROM_DATA={tmp_path / 'tsdb'}"],
                                cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert make.poll() is None, out.read_text()
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"Prometheus never became ready:\n{out.read_text()}")
        text = out.read_text()
        assert f"Prometheus: {url}" in text
        queries = [line.split("  ", 2)[1].strip() for line in text.splitlines()
                   if line.startswith("  ") and re.search(r"[a-z_]+", line)]
        assert len(queries) >= 6, text
        for query in queries:
            params = urllib.parse.urlencode({"query": query})
            try:
                with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=10) as r:
                    answer = json.loads(r.read())
            except urllib.error.HTTPError as exc:
                answer = json.loads(exc.read())
            assert answer["status"] == "success", (query, answer.get("error"))
        with urllib.request.urlopen(f"{url}/api/v1/rules", timeout=10) as response:
            groups = json.loads(response.read())["data"]["groups"]
        rules = yaml.safe_load((REPO / "deploy/alerts/seer-rules.yml").read_text())
        expected = sum(len(g["rules"]) for g in rules["groups"])
        assert sum(len(g["rules"]) for g in groups) == expected  # seer's alerts are loaded
    finally:
        # `exec prometheus` replaced make's recipe shell: stop that child of ours by its PID.
        for child in psutil.Process(make.pid).children(recursive=True):
            child.terminate()
        make.terminate()
        make.wait(30)
