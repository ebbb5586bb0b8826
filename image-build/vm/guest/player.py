"""The VM test bed's sound: a 440 Hz tone with a 40 ms 2 kHz beep at the start of every wall-clock second, played in
real time into an ALSA playback device (the snd-aloop loopback card's playback side, hw:CARD=Loopback,DEV=0).

player.py DEVICE RATE. Mono S16_LE at RATE through the system's libasound (alsa-utils' libasound2) with ctypes: the
guest's system Python has no sound module. The levels are those of the test pattern's sound (tone 0.1, beep 0.8), so
tests/support/av_sync.py finds the beeps in the archive.

As the camera feeder plays its clip as if it had been running since the epoch, the sound does too: sample n is due at
the wall-clock moment n / RATE, so the beep is heard when the camera shows the clip frame of that second. Before each
write the device is asked how much it still has to play (snd_pcm_delay): the next sample written is heard at
now + delay. When that is more than 10 ms from the sample's due moment (the start, an underrun of the loaded TCG guest,
a clock step), the player jumps to the sample of that moment (a resync, printed).
"""
import ctypes
import math
import sys
import time

SND_PCM_STREAM_PLAYBACK = 0
SND_PCM_FORMAT_S16_LE = 2
SND_PCM_ACCESS_RW_INTERLEAVED = 3
LATENCY_US = 100_000     # the device's buffer: what the loaded guest may stall for without an underrun
CHUNK_S = 0.02
RESYNC_S = 0.010
TONE_HZ, BEEP_HZ, BEEP_S = 440, 2000, 0.040
TONE_LEVEL, BEEP_LEVEL = 0.1, 0.8


def one_second(rate):
    """One second of the sound as S16_LE bytes: the beep, then the tone (a whole number of cycles: it loops)."""
    out = bytearray()
    for i in range(rate):
        t = i / rate
        if t < BEEP_S:
            v = BEEP_LEVEL * math.sin(2 * math.pi * BEEP_HZ * t)
        else:
            v = TONE_LEVEL * math.sin(2 * math.pi * TONE_HZ * t)
        out += int(v * 32767).to_bytes(2, "little", signed=True)
    return bytes(out)


def main(device, rate):
    rate = int(rate)
    lib = ctypes.CDLL("libasound.so.2")
    lib.snd_pcm_writei.restype = ctypes.c_long
    lib.snd_strerror.restype = ctypes.c_char_p
    pcm = ctypes.c_void_p()

    def check(rc, what):
        if rc < 0:
            sys.exit(f"player: {what} {device}: {lib.snd_strerror(rc).decode()}")
        return rc

    check(lib.snd_pcm_open(ctypes.byref(pcm), device.encode(), SND_PCM_STREAM_PLAYBACK, 0), "cannot open")
    check(lib.snd_pcm_set_params(pcm, SND_PCM_FORMAT_S16_LE, SND_PCM_ACCESS_RW_INTERLEAVED, 1, rate, 1, LATENCY_US),
          "cannot set 16-bit mono at this rate on")
    sound = one_second(rate)
    loop = sound + sound  # a chunk may wrap past the end of the second
    chunk = int(rate * CHUNK_S)
    n = None
    resyncs = 0
    written = 0
    delay = ctypes.c_long()
    print(f"player: playing into {device} at {rate} Hz", flush=True)
    while True:
        if lib.snd_pcm_delay(pcm, ctypes.byref(delay)) < 0:
            delay.value = 0
        due = round((time.time() + max(0, delay.value) / rate) * rate)  # the sample heard after those queued
        if n is None or abs(n - due) > RESYNC_S * rate:
            if n is not None:
                resyncs += 1
                print(f"player: {(due - n) / rate * 1000:+.0f} ms off: resync {resyncs}", flush=True)
            n = due
        off = 2 * (n % rate)
        rc = lib.snd_pcm_writei(pcm, loop[off:off + 2 * chunk], chunk)
        if rc < 0:  # an underrun (-EPIPE) or a suspend: recover, then resync on the next round
            check(lib.snd_pcm_recover(pcm, int(rc), 1), "cannot recover")
            continue
        n += rc
        written += rc
        if written // rate != (written - rc) // rate and (written // rate) % 30 == 0:
            print(f"player: {written // rate} s played, {resyncs} resyncs", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
