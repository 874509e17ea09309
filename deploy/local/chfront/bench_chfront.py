#!/usr/bin/env python3
"""chfront's own CPU per INSERT, for two versions of it taking turns.

Starts each given chfront script on its own port and data directory, then sends each the same
INSERT bodies (50k RowBinary rows of about 300 bytes, 15 MB, as the sink's batches), several
times per turn, the versions taking turns, and prints the process's CPU (user + system) and
wall time per INSERT. Not a test: a measurement, for benches/README.md.

    git show HEAD~1:deploy/local/chfront/chfront.py > /tmp/chfront_before.py
    "$(deploy/local/stack.sh python)" deploy/local/chfront/bench_chfront.py \\
        /tmp/chfront_before.py deploy/local/chfront/chfront.py
"""

import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROWS = 50_000
INSERTS_PER_TURN = 8
TURNS = 3
FIRST_PORT = 18900


def varuint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def body():
    out = bytearray()
    for n in range(ROWS):
        text = ("x" * 290 + str(n)).encode()
        out += n.to_bytes(8, "little") + varuint(len(text)) + text
    return bytes(out)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post(port, sql, data=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    if data is None:
        connection.request("POST", "/", body=sql.encode())
    else:
        connection.request(
            "POST", "/?" + urllib.parse.urlencode({"query": sql}), body=data
        )
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    if response.status != 200:
        raise RuntimeError(payload.decode(errors="replace"))


def wait_ready(port):
    deadline = time.monotonic() + 60
    while True:
        try:
            post(port, "SELECT 1")
            return
        except (OSError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main():
    scripts = sys.argv[1:]
    if not scripts:
        sys.exit(__doc__)
    data = body()
    started = []
    data_dirs = []
    try:
        for index, script in enumerate(scripts):
            port = FIRST_PORT + index
            process = subprocess.Popen(
                [
                    sys.executable,
                    script,
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--data",
                    data_dir := tempfile.mkdtemp(prefix="bench-chfront-"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            started.append((script, process, port))
            data_dirs.append(data_dir)
        for _, _, port in started:
            wait_ready(port)
            post(
                port,
                "CREATE TABLE t (n UInt64, s String) ENGINE = MergeTree ORDER BY n",
            )
        print(f"{len(data) / 1e6:.1f} MB per INSERT, {ROWS} rows")
        for turn in range(TURNS):
            for script, process, port in started:
                cpu_before, wall_before = cpu_seconds(process.pid), time.perf_counter()
                for _ in range(INSERTS_PER_TURN):
                    post(port, "INSERT INTO t FORMAT RowBinary", data)
                cpu = (cpu_seconds(process.pid) - cpu_before) / INSERTS_PER_TURN
                wall = (time.perf_counter() - wall_before) / INSERTS_PER_TURN
                print(
                    f"turn {turn + 1} {script}: {cpu * 1000:.0f} ms CPU, "
                    f"{wall * 1000:.0f} ms wall per INSERT"
                )
    finally:
        for _, process, _ in started:
            process.terminate()
            process.wait()
        for data_dir in data_dirs:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
