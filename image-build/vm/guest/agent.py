"""The VM test bed's command agent: runs the host's shell commands, one JSON line each way, over virtio-serial.

Request {"id": N, "sh": "...", "timeout": S}; reply {"id": N, "rc": R, "out": "...", "err": "..."} (rc -1: timed out).
A {"hello": ...} line is sent at start (the host may not be connected yet: it pings until it gets a reply).
"""
import json
import os
import subprocess
import sys
import time


def main(path):
    for _ in range(600):
        if os.path.exists(path):
            break
        time.sleep(0.1)
    fd = os.open(path, os.O_RDWR)

    def send(obj):
        data = (json.dumps(obj) + "\n").encode()
        while data:
            data = data[os.write(fd, data):]

    send({"hello": True})
    buf = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:  # the host is not connected
            time.sleep(0.2)
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                req = json.loads(line)
            except ValueError:
                continue
            try:
                p = subprocess.run(["/bin/bash", "-c", req["sh"]], capture_output=True, text=True,
                                   timeout=req.get("timeout", 60), errors="replace")
                send({"id": req["id"], "rc": p.returncode, "out": p.stdout, "err": p.stderr})
            except subprocess.TimeoutExpired as e:
                send({"id": req["id"], "rc": -1, "out": str(e.stdout or ""), "err": f"timed out after {e.timeout} s"})


if __name__ == "__main__":
    main(sys.argv[1])
