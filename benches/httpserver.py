"""Shared by the HTTP benches: start `genrec serve` on a free loopback port,
wait until it is ready, post JSON, read the process's memory."""
import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, timeout=60):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def rss_kb(pid, key):
    """`VmRSS` (now) or `VmHWM` (peak) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


@contextlib.contextmanager
def serving(binary, args):
    """`binary serve ARGS --addr 127.0.0.1:PORT`, ready (its `/readyz` says
    200) or a SystemExit; yields `(process, base_url, command)` and stops it
    on exit."""
    port = free_port()
    cmd = [binary, "serve"] + list(args) + ["--addr", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.2)
        else:
            raise SystemExit(f"server did not get ready: {' '.join(cmd)}")
        yield proc, base, " ".join(cmd)
    finally:
        proc.terminate()
        proc.wait()
