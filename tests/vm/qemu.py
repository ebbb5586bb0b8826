"""One QEMU machine of the VM test bed: boot, the command agent, the link, the power cut (docs/vm-test.md).

TCG only (this machine's /dev/kvm cannot boot a stock kernel): -accel tcg -cpu max -smp 2 -m 1024, direct kernel
boot of the image's own kernel. Each boot writes to a throwaway qcow2 overlay over the cached disk; a second boot
after a power cut reuses the overlay. User networking with restrict=on: the guest reaches only 10.0.2.100:PORT,
forwarded by socat to the emulator on this machine's loopback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

GUEST_EMULATOR_IP = "10.0.2.100"


class VmError(RuntimeError):
    """The VM or its agent failed; the message says what and where to look."""


class Vm:
    def __init__(self, image: Path, work: Path, share: Path, emulator_port: int, *, name: str,
                 boot_disk: Path, overlay: Path | None = None):
        self.image, self.work, self.share, self.port, self.name = image, work, share, emulator_port, name
        self.boot_disk = boot_disk
        self.overlay = overlay or work / f"{name}.qcow2"
        self.console = work / f"{name}.console.log"
        self.monitor_path = work / f"{name}.monitor.sock"
        self.agent_path = work / f"{name}.agent.sock"
        self.proc: subprocess.Popen | None = None
        self._agent: socket.socket | None = None
        self._buf = b""
        self._seq = 0
        self.started_at = 0.0

    # ---------------------------------------------------------------- lifecycle
    def start(self, *, link_up: bool = True) -> None:
        if not self.overlay.exists():
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                            str(self.image / "disk.img"), str(self.overlay)], check=True)
        for p in (self.monitor_path, self.agent_path):
            p.unlink(missing_ok=True)
        fwd = f"tcp:{GUEST_EMULATOR_IP}:{self.port}-cmd:socat - TCP:127.0.0.1:{self.port}"
        cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "1024",
               "-nodefaults", "-display", "none", "-no-reboot", "-rtc", "base=utc",
               "-kernel", str(self.image / "vmlinuz"), "-initrd", str(self.image / "initrd.img"),
               "-append", "root=/dev/vda rw console=ttyS0 kvs_edge.vmtest=1 systemd.show_status=1",
               "-drive", f"file={self.overlay},if=virtio,format=qcow2",
               "-drive", f"file={self.boot_disk},if=virtio,format=raw",
               "-netdev", f"user,id=n0,restrict=on,guestfwd={fwd}",
               "-device", "virtio-net-pci,netdev=n0",
               "-virtfs", f"local,path={self.share},mount_tag=host0,security_model=none,id=host0",
               "-device", "virtio-serial-pci",
               "-chardev", f"socket,id=agent,path={self.agent_path},server=on,wait=off",
               "-device", "virtserialport,chardev=agent,name=kvs.agent",
               "-monitor", f"unix:{self.monitor_path},server=on,wait=off",
               "-serial", f"file:{self.console}",
               "-S"]  # paused until the link is set as asked
        self.proc = subprocess.Popen(cmd, stdout=open(self.work / f"{self.name}.qemu.log", "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_for(self.monitor_path, 30)
        if not link_up:
            self.set_link(False)
        self.monitor("cont")
        self.started_at = time.time()

    def _wait_for(self, path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.proc.poll() is not None:
                raise VmError(f"QEMU exited with {self.proc.returncode}: see {self.work / (self.name + '.qemu.log')}")
            if time.monotonic() > deadline:
                raise VmError(f"QEMU made no {path.name} in {timeout:g} s")
            time.sleep(0.1)

    def power_cut(self) -> float:
        """kill -KILL QEMU: the guest loses everything not on its disk. Returns the time of the cut."""
        t = time.time()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._close_agent()
        return t

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._close_agent()

    def _close_agent(self) -> None:
        if self._agent:
            self._agent.close()
            self._agent, self._buf = None, b""

    # ---------------------------------------------------------------- monitor (HMP on a unix socket)
    def monitor(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(self.monitor_path))
            out = b""
            while not out.endswith(b"(qemu) "):
                out += s.recv(4096)
            s.sendall(command.encode() + b"\n")
            out = b""
            while not out.endswith(b"(qemu) "):
                chunk = s.recv(4096)
                if not chunk:
                    break
                out += chunk
        return out.decode(errors="replace")

    def set_link(self, up: bool) -> None:
        self.monitor(f"set_link n0 {'on' if up else 'off'}")

    # ---------------------------------------------------------------- the agent (virtio-serial)
    def wait_agent(self, timeout: float) -> float:
        """Wait until the guest's agent answers; returns seconds since start."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise VmError(f"QEMU exited with {self.proc.returncode} while booting: see {self.console}")
            try:
                self.sh("true", timeout=5, wait=5)
                return time.time() - self.started_at
            except (OSError, TimeoutError):
                self._close_agent()
                if time.monotonic() > deadline:
                    raise VmError(f"the guest's agent did not answer within {timeout:g} s of boot: see {self.console}")
                time.sleep(2)

    def sh(self, script: str, *, timeout: float = 120, wait: float | None = None) -> tuple[int, str, str]:
        """Run a bash script in the guest as root: (rc, stdout, stderr). rc -1: it timed out in the guest."""
        if self._agent is None:
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(self.agent_path))
            self._agent = s
        self._seq += 1
        rid = self._seq
        self._agent.settimeout(wait if wait is not None else timeout + 60)
        self._agent.sendall((json.dumps({"id": rid, "sh": script, "timeout": timeout}) + "\n").encode())
        while True:
            while b"\n" not in self._buf:
                try:
                    chunk = self._agent.recv(65536)
                except socket.timeout:
                    raise TimeoutError(f"no answer from the guest's agent for: {script[:80]}") from None
                if not chunk:
                    self._close_agent()
                    raise OSError("the agent's channel closed")
                self._buf += chunk
            line, self._buf = self._buf.split(b"\n", 1)
            msg = json.loads(line)
            if msg.get("id") == rid:
                return msg["rc"], msg["out"], msg["err"]

    def check(self, script: str, *, timeout: float = 120) -> str:
        """Run a script that must succeed; its stdout."""
        rc, out, err = self.sh(script, timeout=timeout)
        if rc != 0:
            raise VmError(f"in the guest, `{script}` exited {rc}: {(err or out).strip()[-2000:]}")
        return out
