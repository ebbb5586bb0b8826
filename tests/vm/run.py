"""make vm-test: kvs-edge in a whole QEMU machine (systemd as PID 1, the Debian kernel's video devices, a link that
goes down, a power cut), streaming to the KVS emulator on this machine. See docs/vm-test.md.

    python tests/vm/run.py IMAGE_DIR [--only NAME ...] [--keep]

IMAGE_DIR comes from image-build/vm/build-image.sh. Each scenario boots the image (a throwaway overlay), prints its
figures, and checks what the emulator stored frame by frame against the clip the guest's camera plays. Any failure
fails the run with one line saying what and where the logs are (the work folder is kept then).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # support.av_sync: the beep onsets

from archive import (audio_coverage, beep_offsets, check_sequence, frame_lateness, read_audio,  # noqa: E402
                     read_frames)
from clip import make_clip  # noqa: E402
from qemu import GUEST_EMULATOR_IP, Vm, VmError  # noqa: E402

from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY, Emulator  # noqa: E402
from support.av_sync import beep_onsets  # noqa: E402

FPS = 15
FRAME_MS = 1000 / FPS
FRAGMENT_S = 2
SYNC_S = 2.0
CLIP_SECONDS = 20
BOOT_TIMEOUT = 600        # TCG on a shared machine: boots take 20-35 s alone, far more under load
READY_TIMEOUT = 300       # TimeoutStartSec=60 and RestartSec=5: several attempts
UNIT = "kvs-edge.service"


class Failed(Exception):
    """A scenario's check failed: the message is the one line to print."""


def need(cond, message):
    if not cond:
        raise Failed(message)


def config_yaml(stream: str | None, port: int, *, device: str = "/dev/video10", extra: str = "",
                sources: str | None = None) -> str:
    """The service's configuration: one camera (`stream`, `device`), or `sources`: a `cameras:` list (cameras_yaml)."""
    one = f"  name: {stream}\n" if stream else ""
    return f"""# written by tests/vm/run.py
stream:
{one}  create: true
  fragment_seconds: {FRAGMENT_S}
aws:
  credentials: static
  access_key_id: {DEFAULT_ACCESS_KEY_ID}
  secret_access_key: {DEFAULT_SECRET_ACCESS_KEY}
  endpoint_url: http://{GUEST_EMULATOR_IP}:{port}
{sources or "source:" + chr(10) + v4l2_yaml(device, 2)}
buffer:
  max_bytes: 64MiB
  sync_seconds: {SYNC_S}
time:
  require_sync: false
{extra}"""


def v4l2_yaml(device: str, indent: int) -> str:
    pad = " " * indent
    return "\n".join(pad + line for line in (f"type: v4l2", f"uri: {device}", "width: 320", "height: 240",
                                              f"fps: {FPS}"))


AUDIO_RATE = 16000  # the cameras scenario's sound: low cost for the TCG guest (guest/player.py plays at this rate)
SOUND_CAPTURE = "plughw:CARD=Loopback,DEV=1"  # snd-aloop: what is played into device 0 is captured on device 1


def cameras_yaml(port: int, streams: tuple[str, str]) -> str:
    """Two v4l2loopback cameras (/dev/video10 and /dev/video11), each its own stream; camera a with the loopback's
    sound as its microphone."""
    return config_yaml(None, port, sources=f"""cameras:
  - name: a
    stream: {{name: {streams[0]}}}
    source:
{v4l2_yaml("/dev/video10", 6)}
      audio: {{device: "{SOUND_CAPTURE}", sample_rate: {AUDIO_RATE}, channels: 1, bitrate: 32k}}
  - name: b
    stream: {{name: {streams[1]}}}
    source:
{v4l2_yaml("/dev/video11", 6)}""")


class Bed:
    """The test bed: the image, the work folder, the share, the clip, the emulator; boots VMs."""

    def __init__(self, image: Path, work: Path):
        self.image, self.work = image, work
        self.share = work / "share"
        shutil.copytree(REPO / "image-build" / "vm" / "guest", self.share / "guest")
        self.clip_keys = make_clip(self.share / "clip.au", fps=FPS, seconds=CLIP_SECONDS, keyint_seconds=FRAGMENT_S)
        self.clip_len = len(self.clip_keys)
        self.emulator = Emulator(work / "emulator", host="127.0.0.1", port=0, idle_timeout_s=30.0).start()
        self.vms: list[Vm] = []

    def close(self):
        for vm in self.vms:
            vm.stop()
        self.emulator.stop()

    def boot_disk(self, name: str, files: dict[str, str]) -> Path:
        """The FAT boot partition (what a laptop writes on the SD card), with these files."""
        img = self.work / f"{name}.boot.img"
        img.unlink(missing_ok=True)
        subprocess.run(["mkfs.vfat", "-n", "BOOTFS", "-C", str(img), "32768"], check=True, capture_output=True)
        for fname, text in files.items():
            src = self.work / f"{name}.{fname}"
            src.write_text(text)
            subprocess.run(["mcopy", "-i", str(img), str(src), f"::{fname}"], check=True)
        return img

    def boot(self, name: str, *, boot_files: dict[str, str] | None = None, link_up: bool = True,
             overlay: Path | None = None, boot_disk: Path | None = None) -> Vm:
        disk = boot_disk or self.boot_disk(name, boot_files or {})
        vm = Vm(self.image, self.work, self.share, self.emulator.port, name=name, boot_disk=disk, overlay=overlay)
        self.vms.append(vm)
        vm.start(link_up=link_up)
        took = vm.wait_agent(BOOT_TIMEOUT)
        say(f"{name}: booted, agent answering after {took:.0f} s")
        return vm

    def frames(self, stream: str):
        return read_frames(self.emulator.archive_files(stream), self.clip_keys)


def say(msg: str) -> None:
    print(f"vm-test: {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------------- guest
def save_journal(vm: Vm) -> None:
    """The guest's journal of this boot into the work folder (for a failed scenario; the VM is still up)."""
    if vm.proc is None or vm.proc.poll() is not None:
        return
    try:
        _, out, _ = vm.sh("journalctl -b --no-pager -o short-monotonic", timeout=120)
        (vm.work / f"{vm.name}.journal.log").write_text(out)
    except (OSError, TimeoutError, VmError):
        pass


def unit_props(vm: Vm, *props: str) -> dict[str, str]:
    out = vm.check(f"systemctl show {UNIT} -p {','.join(props)}")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal(vm: Vm, unit: str = UNIT, since: str = "") -> str:
    _, out, _ = vm.sh(f"journalctl -u {unit} --no-pager -o cat {since}", timeout=120)
    return out


def wait_until(what: str, pred, timeout: float, every: float = 2.0, vm: Vm | None = None):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            tail = ""
            if vm is not None:
                tail = " | journal: " + " / ".join(journal(vm).strip().splitlines()[-6:])
            raise Failed(f"{what}: not within {timeout:.0f} s{tail}")
        time.sleep(every)


def wait_active(vm: Vm, timeout: float = READY_TIMEOUT, *, restarts_at_least: int = 0) -> dict[str, str]:
    def ok():
        p = unit_props(vm, "ActiveState", "SubState", "Result", "NRestarts", "MainPID",
                       "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
        need(p.get("Result") != "start-limit-hit", f"{UNIT} hit its start limit: {p}")
        if p.get("ActiveState") == "failed" or (p.get("ActiveState") == "inactive" and p.get("Result") != "success"):
            raise Failed(f"{UNIT} is {p.get('ActiveState')} ({p.get('Result')}): "
                         + " / ".join(journal(vm).strip().splitlines()[-8:]))
        if p.get("ActiveState") == "active" and int(p.get("NRestarts", 0)) >= restarts_at_least:
            return p
        return None
    return wait_until(f"{UNIT} active (READY=1)", ok, timeout, vm=vm)


def status(vm: Vm) -> tuple[int, dict]:
    rc, out, err = vm.sh("kvs-edge status --json", timeout=120)
    try:
        return rc, json.loads(out)
    except ValueError:
        return rc, {"error": (err or out).strip()}


def boot_streaming(bed: Bed, name: str, stream: str, seconds: float) -> tuple[Vm, dict[str, str]]:
    """Boot with a config for `stream` on the boot partition; wait for READY, then stream `seconds`."""
    vm = bed.boot(name, boot_files={"kvs-edge.yaml": config_yaml(stream, bed.emulator.port)})
    p = wait_active(vm)
    time.sleep(seconds)
    return vm, p


def drained(r: tuple[int, dict]) -> bool:
    """Healthy and back to the steady state online: the backlog holds only the fragment being written and the one
    waiting for its PERSISTED (the log counts the open fragment too)."""
    rc, st = r
    return rc == 0 and st["backlog"]["seconds"] <= 2 * FRAGMENT_S + 0.5


def link_up_and_drain(vm: Vm, what: str, timeout: float) -> float:
    """Link on; wait until healthy with the backlog drained (then 6 s for the last PERSISTED). Seconds it took."""
    t_on = time.time()
    vm.set_link(True)
    wait_until(f"backlog drained {what}", lambda: drained(status(vm)), timeout, vm=vm)
    took = time.time() - t_on
    time.sleep(6)
    return round(took, 1)


def guest_clock_offset(vm: Vm) -> float:
    """Guest wall clock minus this machine's (s), from a round trip through the agent."""
    t0 = time.time()
    out = vm.check("date +%s.%N")
    t1 = time.time()
    return float(out) - (t0 + t1) / 2


def stream_figures(bed: Bed, stream: str, since_ms: float = 0):
    frames = [f for f in bed.frames(stream) if f[0] >= since_ms]
    rep = check_sequence(frames, bed.clip_len, FRAME_MS)
    need(rep.unknown == 0, f"{stream}: {rep.unknown} stored frames are not pictures of the clip")
    need(not rep.misordered, f"{stream}: frames out of order: {rep.misordered[:3]}")
    return frames, rep


def delivered(bed: Bed, vm: Vm, stream: str, camera: str | None = None) -> str:
    """Every frame the running service captured is stored. Frames the camera made that the service never captured
    (v4l2loopback overwrites its oldest buffers when the reader lags, as a camera driver drops frames: here when the
    loaded TCG guest stalls for over half a second) show as clip gaps and are reported apart. Returns the figure.
    With several cameras, `camera` names the one (never restarted since the service started) whose frames count."""
    rc, st = status(vm)
    need("camera" in st, f"no status from the service: {st}")
    captured, refused = st["camera"]["frames"], st["frames_dropped"]
    if camera is not None:
        captured, refused = camera_entry(st, camera)["frames"], camera_entry(st, camera)["frames_dropped"]
    since_ms, until_ms = st["started_at"] * 1000, st["updated_at"] * 1000
    time.sleep(3 * FRAGMENT_S + 2)  # until everything captured by then is PERSISTED (the link is up)
    stored = len({ts for ts, _ in bed.frames(stream) if since_ms <= ts <= until_ms})
    missing = captured - refused - stored
    need(abs(missing) <= 3, f"{stream}: the service captured {captured} frames ({refused} refused) since it started "
         f"but {stored} are stored: {missing} missing")
    return f"of the {captured} frames the service captured ({refused} refused) {stored} are stored"


def camera_entry(st: dict, name: str) -> dict:
    entry = [c for c in st.get("cameras") or [] if c.get("name") == name]
    need(entry, f"kvs-edge status names no camera {name}: {st.get('cameras')}")
    return entry[0]


def spread(values: list[float]) -> str:
    v = sorted(values)
    return f"{len(v)}: median {v[len(v) // 2]:+.0f}, min {v[0]:+.0f}, max {v[-1]:+.0f}"


def capture_gaps(gaps) -> str:
    return f"{sum(g.lost for g in gaps)} frames in {len(gaps)} gaps" + \
        (f" (longest {max(g.seconds for g in gaps):.2f} s)" if gaps else "")


def arrival_order_ok(bed: Bed, stream: str) -> None:
    """The emulator's index in arrival order: producer timestamps never go back (a re-sent duplicate may repeat)."""
    last = None
    for e in bed.emulator.archive(stream):
        need(last is None or e.producer_ts_ms >= last or e.defects,
             f"{stream}: fragment {e.fragment_number} at {e.producer_ts_ms} arrived after {last}")
        last = max(last or 0, e.producer_ts_ms)


# ---------------------------------------------------------------------------------------------------------- scenarios
def s1_boot(bed: Bed, fig: dict) -> None:
    """Boot; READY within TimeoutStartSec; exposure; status healthy; streaming from v4l2loopback H.264; vivid error."""
    stream = "vm-boot"
    vm = bed.boot("s1", boot_files={"kvs-edge.yaml": config_yaml(stream, bed.emulator.port)})
    p = wait_active(vm)
    need(p["NRestarts"] == "0", f"{UNIT} needed {p['NRestarts']} restarts to reach READY: {journal(vm)[-800:]}")
    exec_s = int(p["ExecMainStartTimestampMonotonic"]) / 1e6
    ready_s = int(p["ActiveEnterTimestampMonotonic"]) / 1e6
    fig["READY after start (s)"] = round(ready_s - exec_s, 1)
    fig["READY after kernel start (s)"] = round(ready_s, 1)
    imported = journal(vm, "kvs-edge-boot-config.service")
    need("applied" in imported, f"the boot-partition kvs-edge.yaml was not imported: {imported.strip()[-400:]}")
    mode = vm.check("stat -c '%a %U:%G' /etc/kvs-edge/config.yaml").strip()
    need(mode == "640 root:kvs-edge", f"/etc/kvs-edge/config.yaml is {mode}, expected 640 root:kvs-edge")
    log = journal(vm)
    need("readable by" not in log, f"the service warns about the config's permissions: "
         f"{[l for l in log.splitlines() if 'readable by' in l]}")
    sec = vm.check(f"systemd-analyze security {UNIT} --no-pager", timeout=300)
    line = [l for l in sec.splitlines() if "Overall exposure level" in l]
    need(line, f"systemd-analyze security printed no exposure level: {sec[-300:]}")
    fig["systemd-analyze security"] = line[0].split(":", 1)[1].strip()
    # The devices as the service sees them: DevicePolicy=closed with DeviceAllow=char-video4linux is enforced here.
    allowed = vm.sh(f"systemd-run --wait --quiet -p DevicePolicy=closed -p 'DeviceAllow=char-video4linux rw' "
                    f"cat /dev/vda >/dev/null", timeout=120)
    need(allowed[0] != 0, "a unit with DevicePolicy=closed could read /dev/vda: device rules not enforced")
    say("s1: streaming 30 s")
    time.sleep(30)
    rc, st = status(vm)
    need(rc == 0, f"kvs-edge status is unhealthy while streaming: {st.get('reasons') or st}")
    fig["status"] = f"healthy, {st['camera']['frames']} frames, {st.get('fragments_persisted')} fragments persisted"
    frames, rep = stream_figures(bed, stream)
    need(rep.frames >= 20 * FPS, f"{stream}: only {rep.frames} frames stored after 30 s of streaming")
    fig["frames stored, in order"] = f"{rep.frames}; {delivered(bed, vm, stream)}"
    fig["camera frames the service never captured"] = capture_gaps(rep.gaps)
    arrival_order_ok(bed, stream)
    # vivid: a kernel camera with raw formats only: `source.type: v4l2` must refuse it in one clear line.
    vm.check("install -m 0640 -g kvs-edge /dev/stdin /etc/kvs-edge/vivid.yaml <<'EOF'\n" +
             config_yaml("vm-vivid", bed.emulator.port, device="/dev/video20",
                         extra="health:\n  status_file: /tmp/vivid-status.json\n") +
             "EOF\nsed -i 's#^  max_bytes#  path: /tmp/vivid-buffer\\n  max_bytes#' /etc/kvs-edge/vivid.yaml")
    rc, out, err = vm.sh("cd /tmp && runuser -u kvs-edge -- /opt/kvs-edge/venv/bin/kvs-edge run "
                         "--config /etc/kvs-edge/vivid.yaml", timeout=300)
    errline = [l for l in err.splitlines() if "/dev/video20" in l]
    need(rc not in (0, -1) and errline, f"kvs-edge run on vivid exited {rc} without naming /dev/video20: {err[-600:]}")
    fig["vivid (raw only) error"] = f"exit {rc}: {' / '.join(errline)[:400]}"
    vm.stop()


def s2_watchdog(bed: Bed, fig: dict) -> None:
    """SIGSTOP the service: systemd's watchdog kills and restarts it; time to READY again, frames lost."""
    stream = "vm-watchdog"
    vm, p = boot_streaming(bed, "s2", stream, 20)
    off = guest_clock_offset(vm)
    t_stop = time.time()
    vm.check(f"kill -STOP {p['MainPID']}")
    p2 = wait_active(vm, restarts_at_least=int(p["NRestarts"]) + 1)
    t_ready = time.time()
    log = journal(vm)
    need("Watchdog timeout" in log or "watchdog" in log.lower(),
         f"{UNIT} restarted but the journal names no watchdog timeout: {log[-600:]}")
    fig["SIGSTOP -> READY again (s)"] = round(t_ready - t_stop, 1)
    time.sleep(20)
    frames, rep = stream_figures(bed, stream)
    stop_ms = (t_stop + off) * 1000
    gaps = rep.gaps_between(stop_ms - 5000, (t_ready + off) * 1000 + 5000)
    fig["frames lost (SIGSTOP to READY)"] = sum(g.lost for g in gaps)
    fig["after the restart"] = delivered(bed, vm, stream)
    fig["camera frames never captured outside the restart"] = capture_gaps([g for g in rep.gaps if g not in gaps])
    fig["errors acknowledged by the emulator"] = len(bed.emulator.stats(stream).error_acks)
    need(not bed.emulator.stats(stream).error_acks, f"{stream}: error ACKs: {bed.emulator.stats(stream).error_acks}")
    rc, st = status(vm)
    need(rc == 0, f"not healthy after the watchdog restart: {st.get('reasons') or st}")
    vm.stop()


def s3_link_loss(bed: Bed, fig: dict) -> None:
    """The link goes down for 60 s: status unhealthy, then healthy again; every frame delivered in order."""
    stream = "vm-link"
    vm, _ = boot_streaming(bed, "s3", stream, 15)
    rc, st = status(vm)
    need(rc == 0, f"not healthy before the outage: {st.get('reasons') or st}")
    t_off = time.time()
    vm.set_link(False)
    st = wait_until("kvs-edge status unhealthy (offline) with the link down",
                    lambda: (lambda r: r[1] if r[0] == 1 else None)(status(vm)), 60, vm=vm)
    fig["link down -> status unhealthy (s)"] = round(time.time() - t_off, 1)
    fig["unhealthy reasons"] = " | ".join(r[:90] for r in st.get("reasons") or ["?"])
    time.sleep(max(0.0, 60 - (time.time() - t_off)))
    rc, st = status(vm)
    fig["backlog after 60 s offline"] = f"{st['backlog']['fragments']} fragments, {st['backlog']['seconds']:.0f} s"
    fig["link up -> healthy, backlog drained (s)"] = link_up_and_drain(vm, "after the link came back", 600)
    frames, rep = stream_figures(bed, stream)
    fig["frames stored, in order"] = f"{rep.frames} ({rep.duplicates} duplicates); " \
                                     f"{delivered(bed, vm, stream)}"
    fig["camera frames the service never captured"] = capture_gaps(rep.gaps)
    arrival_order_ok(bed, stream)
    vm.stop()


def s4_power_cut(bed: Bed, fig: dict) -> None:
    """A power cut during an outage: ext4 recovers, the backlog is intact (at most sync_seconds lost), it drains."""
    stream = "vm-power"
    vm, _ = boot_streaming(bed, "s4a", stream, 10)
    vm.set_link(False)
    time.sleep(25)
    off = guest_clock_offset(vm)
    _, st = status(vm)  # the status file is rewritten every second: this is the backlog at the cut, to a second
    t_cut = vm.power_cut()
    before = st["backlog"]
    fig["backlog before the cut (status, counts the open fragment)"] = \
        f"{before['fragments']} fragments, {before['seconds']:.1f} s"
    vm2 = bed.boot("s4b", link_up=False, overlay=vm.overlay, boot_disk=vm.boot_disk)
    ext4 = vm2.check("journalctl -k --no-pager -o cat | grep -i -E 'EXT4-fs.*(recover|orphan|mounted)' || true")
    fig["ext4 at the next boot"] = "; ".join(l.strip() for l in ext4.splitlines()[:2])[:160]
    wait_active(vm2)
    recovered = [l for l in journal(vm2).splitlines() if "fragments waiting" in l]
    need(recovered, f"no buffer recovery line in the journal: {journal(vm2)[-600:]}")
    fig["buffer at restart"] = recovered[0][:160]
    time.sleep(5)
    fig["link up -> backlog drained (s)"] = link_up_and_drain(vm2, "after the power cut", 900)
    frames = bed.frames(stream)
    cut_ms = (t_cut + off) * 1000
    before_cut = [f for f in frames if f[0] <= cut_ms]
    need(before_cut, f"{stream}: nothing stored from before the power cut")
    last_ms = max(f[0] for f in before_cut)
    lost = round((cut_ms - last_ms) / FRAME_MS)
    fig["frames lost by the power cut"] = f"{lost} (the last {(cut_ms - last_ms) / 1000:.1f} s before the cut; " \
                                          f"promise: at most sync_seconds {SYNC_S:g} s = {int(SYNC_S * FPS)} frames)"
    frames, rep = stream_figures(bed, stream)
    fig["frames stored, in order"] = f"{rep.frames} ({rep.duplicates} duplicates), gaps: " + \
        ", ".join(f"{g.lost} frames over {g.seconds:.0f} s" for g in rep.gaps)
    pre = [g for g in rep.gaps if g.after_ms <= cut_ms]
    need(not pre, f"{stream}: frames missing before the power cut (inside the backlog): {pre[:3]}")
    need(lost <= SYNC_S * FPS + FPS, f"the power cut lost {lost} frames, more than sync_seconds ({SYNC_S:g} s) "
         f"+ 1 s of capture latency")
    vm2.stop()


def s5_stall(bed: Bed, fig: dict) -> None:
    """The camera stalls (the feeder is frozen with SIGSTOP: the device stays, frames stop): the service exits, systemd
    restarts it, it recovers when frames return (SIGCONT)."""
    stream = "vm-stall"
    vm, p = boot_streaming(bed, "s5", stream, 10)
    off = guest_clock_offset(vm)
    t_stop = time.time()
    vm.check("systemctl kill -s SIGSTOP vmtest-feeder")
    wait_until(f"{UNIT} leaves READY after the camera stalls",
               lambda: int(unit_props(vm, "NRestarts")["NRestarts"]) > int(p["NRestarts"])
               or unit_props(vm, "ActiveState")["ActiveState"] != "active", 300, vm=vm)
    fig["camera stalled -> service leaves READY (s)"] = round(time.time() - t_stop, 1)
    time.sleep(20)
    t_feed = time.time()
    vm.check("systemctl kill -s SIGCONT vmtest-feeder")
    p2 = wait_active(vm, restarts_at_least=int(p["NRestarts"]) + 1)
    fig["camera back -> READY (s)"] = round(time.time() - t_feed, 1)
    fig["restarts"] = p2["NRestarts"]
    time.sleep(15)
    rc, st = status(vm)
    need(rc == 0, f"not healthy after the camera came back: {st.get('reasons') or st}")
    log = journal(vm)
    stall = [l for l in log.splitlines() if "stalled" in l.lower() or "no frame" in l.lower()]
    fig["journal"] = (stall[0] if stall else "")[:160]
    frames, rep = stream_figures(bed, stream)
    feed_ms = (t_feed + off) * 1000
    after = [f[0] for f in frames if f[0] >= feed_ms]
    need(after, f"{stream}: nothing stored after the camera came back")
    fig["camera back -> first frame stored (s; includes the feeder's wait for a key frame, up to 2 s)"] = \
        round((min(after) - feed_ms) / 1000, 1)
    vm.stop()


def s6_reload(bed: Bed, fig: dict) -> None:
    """systemctl reload with a broken, then a valid config; a broken kvs-edge.yaml on the FAT boot partition."""
    stream = "vm-reload"
    good = config_yaml(stream, bed.emulator.port)
    vm = bed.boot("s6a", boot_files={"kvs-edge.yaml": good})
    p = wait_active(vm)
    vm.check("cp /etc/kvs-edge/config.yaml /root/good.yaml && "
             "printf 'stream:\\n  name: vm-reload\\nsource:\\n  fps: fast\\n' > /etc/kvs-edge/config.yaml")
    t = time.time()
    vm.check(f"systemctl reload {UNIT}", timeout=300)
    p2 = unit_props(vm, "MainPID", "ActiveState")
    need(p2["MainPID"] == p["MainPID"] and p2["ActiveState"] == "active",
         f"a broken config on reload stopped the service: {p2}")
    refused = wait_until("the reload refusal in the journal",
                         lambda: [l for l in journal(vm).splitlines() if "reload refused" in l], 120, vm=vm)
    fig["reload, broken config"] = f"kept running: {refused[0][:140]}"
    vm.check("cp /root/good.yaml /etc/kvs-edge/config.yaml && sed -i 's/^  sync_seconds: .*/  sync_seconds: 1/' "
             "/etc/kvs-edge/config.yaml")
    vm.check(f"systemctl reload {UNIT}", timeout=300)
    changed = wait_until("the reload of a valid config in the journal",
                         lambda: [l for l in journal(vm).splitlines() if "configuration changed" in l], 300, vm=vm)
    wait_active(vm)
    time.sleep(10)
    rc, st = status(vm)
    need(rc == 0, f"not healthy after reloading a valid config: {st.get('reasons') or st}")
    fig["reload, valid config"] = changed[0][:140] + f"; {round(time.time() - t)} s later healthy"
    # The boot partition: a broken kvs-edge.yaml is set aside with the reason, the installed config stays.
    vm.check("systemctl poweroff --no-block", timeout=60)
    vm.proc.wait(timeout=300)
    disk = bed.boot_disk("s6b", {"kvs-edge.yaml": "stream:\n  name: [not, a, name]\n"})
    vm2 = bed.boot("s6b", overlay=vm.overlay, boot_disk=disk)
    wait_active(vm2)
    files = vm2.check("ls /boot/firmware").split()
    need("kvs-edge.yaml.invalid" in files and "kvs-edge.yaml.error" in files and "kvs-edge.yaml" not in files,
         f"the broken boot-partition file was not set aside: /boot/firmware holds {files}")
    why = vm2.check("head -c 300 /boot/firmware/kvs-edge.yaml.error").strip().splitlines()
    fig["boot partition, broken kvs-edge.yaml"] = f"set aside (.invalid, .error: {why[0][:100] if why else ''}); " \
                                                   "service started on the installed config"
    vm2.stop()


def s7_cameras(bed: Bed, fig: dict) -> None:
    """Two cameras (two v4l2loopback devices, two feeders), camera a with sound from the kernel's snd-aloop card:
    two streams complete and in order, an AAC track covering the video; camera b's feeder frozen: the service is not
    restarted, status names camera b, camera a streams on; camera b recovers."""
    streams = ("vm-cam-a", "vm-cam-b")
    env = bed.share / "setup.env"  # read by guest/setup.sh at boot: two video devices and the sound
    env.write_text('VIDEO_NRS="10 11"\nSOUND=1\n')
    try:
        vm = bed.boot("s7", boot_files={"kvs-edge.yaml": cameras_yaml(bed.emulator.port, streams)})
    finally:
        env.unlink()
    p = wait_active(vm)
    need(p["NRestarts"] == "0", f"{UNIT} needed {p['NRestarts']} restarts to reach READY: {journal(vm)[-800:]}")

    def all_ok(r):
        rc, st = r
        cams = st.get("cameras") or []
        return rc == 0 and len(cams) == 2 and all(c["state"] == "ok" for c in cams) and cams[0].get("audio") == "ok"
    t = time.time()
    wait_until("both cameras ok with sound", lambda: all_ok(status(vm)), 120, vm=vm)
    fig["READY -> both cameras ok, sound ok (s)"] = round(time.time() - t, 1)
    say("s7: streaming 30 s")
    time.sleep(30)
    rc, st = status(vm)
    need(rc == 0, f"kvs-edge status is unhealthy while both cameras stream: {st.get('reasons') or st}")
    fig["status"] = "healthy; " + "; ".join(
        f"{c['name']}: {c['state']}, {c['frames']} frames, audio {c.get('audio')}" for c in st["cameras"]) + \
        f"; audio {st['audio']}"
    for name, stream in zip("ab", streams):
        frames, rep = stream_figures(bed, stream)
        fig[f"{stream}: first frame stored after the service started (s)"] = \
            round(min(ts for ts, _ in frames) / 1000 - st["started_at"], 1)
        need(rep.frames >= 20 * FPS, f"{stream}: only {rep.frames} frames stored after 30 s of streaming")
        fig[f"{stream}: frames stored, in order"] = f"{rep.frames}; {delivered(bed, vm, stream, name)}"
        fig[f"{stream}: camera frames the service never captured"] = capture_gaps(rep.gaps)
        arrival_order_ok(bed, stream)
    # camera a's sound: AAC with a 2- or 5-byte AudioSpecificConfig, decoded by FFmpeg, over the video's time span
    files = bed.emulator.archive_files(streams[0])
    track = read_audio(files)
    need(track is not None, f"{streams[0]}: no audio track in the archive")
    need(track.codec == "aac" and track.config_bytes in (2, 5),
         f"{streams[0]}: audio is {track.codec} with a {track.config_bytes}-byte CodecPrivate, not AAC with 2 or 5")
    cov = audio_coverage([(t_ms, len(x), rate) for t_ms, x, rate in track.chunks])
    video = [ts for ts, _ in bed.frames(streams[0])]
    v0, v1 = min(video), max(video) + FRAME_MS
    fig["camera a: sound vs video (s)"] = (
        f"audio {cov.seconds:.1f} s decoded over {(cov.end_ms - cov.first_ms) / 1000:.1f} s, video "
        f"{(v1 - v0) / 1000:.1f} s; audio starts {(cov.first_ms - v0) / 1000:+.2f} s, "
        f"ends {(cov.end_ms - v1) / 1000:+.2f} s from the video; {len(cov.gaps)} audio gaps "
        f"({sum(g for _, g in cov.gaps):.0f} ms), {cov.overlaps} overlaps")
    need(cov.first_ms - v0 < 5000 and v1 - cov.end_ms < 5000 and cov.seconds > 0.9 * (v1 - v0) / 1000,
         f"{streams[0]}: the sound ({cov.seconds:.1f} s from {cov.first_ms:.0f} to {cov.end_ms:.0f} ms) does not cover "
         f"the video ({v0:.0f} to {v1:.0f} ms)")
    log = journal(vm)
    fig["audio lines in the journal"] = " / ".join(
        l[:120] for l in log.splitlines() if "audio" in l.lower() or "xrun" in l.lower())[:400] or "none"
    _, hw, _ = vm.sh("cat /proc/asound/Loopback/pcm1c/sub0/hw_params")
    hwp = dict(l.split(": ", 1) for l in hw.splitlines() if ": " in l)
    fig["capture side (hw_params)"] = ", ".join(f"{k} {hwp.get(k)}" for k in ("rate", "period_size", "buffer_size"))
    _, player, _ = vm.sh("journalctl -u vmtest-sound --no-pager -o cat | tail -n 5")
    fig["player (guest/player.py)"] = " / ".join(player.strip().splitlines())[:300]
    beeps = beep_onsets(track.chunks)
    offsets = beep_offsets(beeps, bed.frames(streams[0]), bed.clip_len, FPS)
    fig["beep - clip frame of the same second, in the archive (ms)"] = spread(offsets) if offsets else \
        "no beep paired with a frame"
    fig["stamped after played/written (ms): sound (beep - its second), picture (frame - its moment)"] = \
        f"sound {spread([b - round(b / 1000) * 1000 for b in beeps])}; " \
        f"picture {spread(frame_lateness(bed.frames(streams[0]), bed.clip_len, FPS))}"

    # isolation: camera b's feeder frozen (its device stays, frames stop)
    p0 = unit_props(vm, "NRestarts", "MainPID")
    _, st0 = status(vm)
    failures_a = camera_entry(st0, "a")["failures"]
    off = guest_clock_offset(vm)
    t_stop = time.time()
    vm.check("systemctl kill -s SIGSTOP vmtest-feeder-11")
    st = wait_until("kvs-edge status names camera b failing",
                    lambda: (lambda r: r[1] if camera_entry(r[1], "b")["state"] not in ("ok", "starting") else None)(
                        status(vm)), 120, every=1, vm=vm)
    fig["camera b stalled -> status names it (s)"] = round(time.time() - t_stop, 1)
    rc, st = status(vm)
    b = camera_entry(st, "b")
    fig["status with camera b stalled"] = f"exit {rc}; b: {b['state']} ({b['last_error']}); reasons: " + \
        " | ".join(r[:100] for r in st.get("reasons") or [])
    time.sleep(max(0.0, 25 - (time.time() - t_stop)))
    p1 = unit_props(vm, "NRestarts", "MainPID", "ActiveState")
    need(p1["ActiveState"] == "active" and p1["NRestarts"] == p0["NRestarts"] and p1["MainPID"] == p0["MainPID"],
         f"camera b stalling restarted the service (camera a was healthy): {p0} -> {p1}")
    _, st = status(vm)
    need(camera_entry(st, "a")["state"] == "ok" and camera_entry(st, "a")["failures"] == failures_a,
         f"camera a was disturbed by camera b's stall: {camera_entry(st, 'a')}")
    fig["camera b frozen 25 s"] = f"service active, NRestarts {p1['NRestarts']}, same pid; camera b failures " \
                                  f"{camera_entry(st, 'b')['failures']}"
    t_cont = time.time()
    vm.check("systemctl kill -s SIGCONT vmtest-feeder-11")
    wait_until("camera b streaming again", lambda: all_ok(status(vm)), 180, every=1, vm=vm)
    fig["camera b back -> status ok (s)"] = round(time.time() - t_cont, 1)
    time.sleep(3 * FRAGMENT_S + 4)
    stop_ms, cont_ms = (t_stop + off) * 1000, (t_cont + off) * 1000
    _, rep_a = stream_figures(bed, streams[0])
    during = rep_a.gaps_between(stop_ms, cont_ms)
    fig["camera a while b was frozen"] = capture_gaps(during)
    need(all(g.seconds < 1.0 for g in during),
         f"{streams[0]}: camera a lost video while camera b was frozen: {during}")
    frames_b, _ = stream_figures(bed, streams[1])
    after = [ts for ts, _ in frames_b if ts >= cont_ms]
    need(after, f"{streams[1]}: nothing stored after camera b's feeder went on")
    fig["camera b back -> first frame stored (s; includes the feeder's wait for a key frame, up to 2 s)"] = \
        round((min(after) - cont_ms) / 1000, 1)
    p2 = unit_props(vm, "NRestarts", "MainPID")
    need(p2 == {k: p0[k] for k in p2}, f"the service restarted during the scenario: {p0} -> {p2}")
    save_journal(vm)  # kept with --keep: the two cameras' and the sound's lines
    vm.stop()


SCENARIOS = {"boot": s1_boot, "watchdog": s2_watchdog, "link-loss": s3_link_loss, "power-cut": s4_power_cut,
             "stall": s5_stall, "reload": s6_reload, "cameras": s7_cameras}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", type=Path)
    ap.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only these scenarios")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, overlays) even on success")
    args = ap.parse_args(argv)
    for tool in ("qemu-system-x86_64", "qemu-img", "socat", "mkfs.vfat", "mcopy"):
        if not shutil.which(tool):
            print(f"vm-test: {tool} is missing: run `make vm-test` (it installs the packages) or apt install it",
                  file=sys.stderr)
            return 2
    if not (args.image / "disk.img").exists():
        print(f"vm-test: no disk.img in {args.image}: build it with image-build/vm/build-image.sh", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="kvs-edge-vm-test.", dir="/var/tmp"))
    t0 = time.time()
    bed = Bed(args.image, work)
    results = []
    try:
        for name in args.only or SCENARIOS:
            fig: dict = {}
            ok = False
            say(f"--- {name}: {SCENARIOS[name].__doc__.strip()}")
            t = time.time()
            try:
                SCENARIOS[name](bed, fig)
                ok, why = True, ""
            except (Failed, VmError) as e:
                ok, why = False, str(e)
            except Exception as e:  # noqa: BLE001 - report and go on with the next scenario
                ok, why = False, f"{type(e).__name__}: {e}"
                traceback.print_exc()
            finally:
                for vm in bed.vms:
                    if not ok:
                        save_journal(vm)
                    vm.stop()
            for k, v in fig.items():
                say(f"    {k}: {v}")
            say(f"{name}: {'PASSED' if ok else 'FAILED: ' + why} ({time.time() - t:.0f} s)")
            results.append((name, ok, why, round(time.time() - t)))
    finally:
        bed.close()
    failed = [r for r in results if not r[1]]
    say(f"{len(results) - len(failed)} of {len(results)} scenarios passed in {time.time() - t0:.0f} s")
    if failed or args.keep:
        say(f"logs (consoles, QEMU, the emulator's archive): {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    for name, _, why, _ in failed:
        print(f"vm-test: FAILED {name}: {why}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
