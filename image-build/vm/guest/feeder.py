"""The camera of the VM test bed: writes a pre-encoded H.264 clip into a v4l2loopback device at its frame rate.

feeder.py DEVICE CLIP READY_FILE. CLIP (made on the host by image-build/vm/clip.py): a JSON header line
{"width", "height", "fps", "frames"} then, per access unit, a 4-byte big-endian length and the Annex B bytes (SPS and
PPS before every IDR). The device is set to H.264 output at the clip's size (VIDIOC_S_FMT on the OUTPUT queue, as
FFmpeg's v4l2 output device does), then each access unit is one write(): one buffer, timestamped by the driver.
The clip plays as if it had been running since the epoch: frame i of the clip is written at the moments t with
floor(t * fps) = i (mod the clip's length), so across a reboot or a restart of the feeder the clip frame tells the
time, and the check on the host counts lost frames exactly. It starts at the next key frame (a decoder needs one)
and keeps an absolute schedule (no drift); when the writer falls behind by over a second it goes back to the clip
frame of the current time, at the next key frame. Nothing is encoded here: the guest runs 20-30x slower than the host.
"""
import fcntl
import json
import os
import struct
import sys
import time

VIDIOC_G_FMT = 0xC0D05604
VIDIOC_S_FMT = 0xC0D05605
V4L2_BUF_TYPE_VIDEO_OUTPUT = 2
V4L2_FIELD_NONE = 1
V4L2_PIX_FMT_H264 = int.from_bytes(b"H264", "little")


def main(device, clip, ready):
    with open(clip, "rb") as f:
        header = json.loads(f.readline())
        data = f.read()
    units, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        units.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    # A reader that opened the device while no writer was there (the service restarting after the camera stopped)
    # holds it in capture mode for a moment: the output format is refused (EINVAL/EBUSY) until it lets go.
    deadline = time.monotonic() + 120
    while True:
        fd = os.open(device, os.O_RDWR)
        fmt = bytearray(208)  # struct v4l2_format: u32 type, then the union at offset 8
        struct.pack_into("I", fmt, 0, V4L2_BUF_TYPE_VIDEO_OUTPUT)
        try:
            fcntl.ioctl(fd, VIDIOC_G_FMT, fmt)
            # struct v4l2_pix_format: width, height, pixelformat, field, bytesperline, sizeimage, ...
            struct.pack_into("IIIIII", fmt, 8, header["width"], header["height"], V4L2_PIX_FMT_H264,
                             V4L2_FIELD_NONE, 0, max(len(u) for u in units) * 2)
            fcntl.ioctl(fd, VIDIOC_S_FMT, fmt)
            break
        except OSError as e:
            os.close(fd)
            if time.monotonic() > deadline:
                raise
            print(f"feeder: {device} refuses the output format ({e.strerror}): retrying", flush=True)
            time.sleep(0.2)
    fps, n_units, keyint = header["fps"], len(units), header["keyint"]
    written = 0
    while True:
        # the next key frame of the clip played since the epoch, and the wall-clock moment it is due
        tick = int(time.time() * fps) + 1
        tick += -tick % keyint  # the clip's length is a whole number of key-frame intervals
        while True:
            late = time.time() - tick / fps
            if late < 0:
                time.sleep(-late)
                # Checked again after the sleep: a feeder frozen (SIGSTOP) while it waited must not write, when it
                # thaws, the frame that was due before the freeze: a camera never delivers a picture that late.
                late = time.time() - tick / fps
            if late > 1.0:
                print(f"feeder: {late:.1f} s behind: back to the clip frame of the current time", flush=True)
                break
            os.write(fd, units[tick % n_units])
            tick += 1
            written += 1
            if written == 1:
                open(ready, "w").close()
            if written % (fps * 30) == 0:
                print(f"feeder: {written} frames written", flush=True)

if __name__ == "__main__":
    main(*sys.argv[1:4])
