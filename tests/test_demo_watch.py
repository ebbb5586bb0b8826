"""`kvs-edge demo --watch` (what `make demo` runs) in a terminal: it ends with the web console's URL and keeps
streaming live until Ctrl-C. The terminal is a real pseudo-terminal (pty), so the command sees a tty as a user's."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from support.appliance import wait_until

ROOT = Path(__file__).resolve().parents[1]


class Terminal:
    def __init__(self, args, cwd):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, close_fds=True)
        os.close(slave)
        self.text = ""

    def read_until(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while not predicate(self.text):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; the terminal showed:\n"
                                     f"{self.text[-2000:]}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    self.text += os.read(self.master, 65536).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    if self.proc.poll() is not None:
                        raise AssertionError(f"demo exited {self.proc.returncode}:\n{self.text[-2000:]}") from None
        return self.text

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)


@pytest.mark.timeout(180)
def test_demo_watch_in_a_terminal_serves_the_console_live_until_ctrl_c(tmp_path):
    term = Terminal([sys.executable, "-m", "kvs_edge", "demo", "--watch", "--seconds", "4", "--data-dir",
                     str(tmp_path)], ROOT)
    try:
        text = term.read_until(lambda t: "until Ctrl-C" in t and t.rstrip().endswith("/"), 120, "the console URL")
        assert "frames captured" in text  # the demo's own check ran first
        url = text.rstrip().splitlines()[-1].strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        page = requests.get(url, timeout=30)
        assert page.status_code == 200 and "kvs-edge emulator console" in page.text

        def fragments() -> int:
            return requests.get(url + "console/api/streams", timeout=30).json()[0]["Fragments"]

        before = fragments()
        wait_until(lambda: fragments() >= before + 2, 60, "the test pattern to keep streaming")
        hls = requests.get(url + "console/api/hls?stream=kvs-edge-demo", timeout=30).json()["url"]
        assert requests.get(hls, timeout=30).text.startswith("#EXTM3U")
        term.proc.send_signal(signal.SIGINT)  # Ctrl-C
        term.read_until(lambda t: "stopped" in t.splitlines()[-1] if t.strip() else False, 60, "a clean stop")
        assert term.proc.wait(30) == 0
    finally:
        term.close()


@pytest.mark.timeout(120)
def test_demo_watch_without_a_terminal_exits_as_before(tmp_path):
    """CI and pipes: `make demo` (--watch) ends after the check, as the demo always did."""
    r = subprocess.run([sys.executable, "-m", "kvs_edge", "demo", "--watch", "--seconds", "3", "--data-dir",
                        str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=110)
    assert r.returncode == 0, r.stderr
    assert "frames captured" in r.stdout and "Ctrl-C" not in r.stdout and "web console" not in r.stdout
