"""kvs_edge.picamera2.KvsOutput through the REAL picamera2 on a real libcamera (virtual camera), in its own process.

Run by tests/test_real_picamera2_kvsoutput.py with the interpreter of the venv tools/real-picamera/build.sh made; the
credentials and the endpoint (the emulator) come from the environment, as for a user's script. The same stand-ins as
real_picamera_run.py: pykms, a memfd DMA heap, H264Encoder bound to LibavH264Encoder (picamera2's Pi 5 path).

    python real_picamera_kvsoutput.py OUT STREAM SECONDS       (writes OUT/result.json)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STANDINS = REPO / "tools" / "real-picamera" / "standins"


def main() -> int:
    out, stream, seconds = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    sys.path[:0] = [str(REPO), str(STANDINS)]
    import memfd_dma_heap  # noqa: E402  (stand-in)
    import picamera2.encoders as encoders  # noqa: E402  (the real one)
    from picamera2 import Picamera2  # noqa: E402

    memfd_dma_heap.install()
    encoders.H264Encoder = encoders.LibavH264Encoder  # what picamera2's encoders/__init__.py does on a Pi 5

    from kvs_edge.picamera2 import KvsOutput  # noqa: E402

    picam2 = Picamera2()
    picam2.configure(picam2.create_video_configuration(main={"size": (640, 480), "format": "YUV420"}, controls={"FrameRate": 30}))
    output = KvsOutput(stream, region="us-east-1", create_stream=True, fragment_seconds=1.0)
    picam2.start_recording(encoders.H264Encoder(repeat=True, iperiod=30), output)
    time.sleep(seconds)
    picam2.stop_recording()  # stops the output: flush, close
    picam2.close()
    st = output.producer.stats
    result = {"frames": st.frames, "fragments": st.fragments, "persisted": st.fragments_persisted,
              "skipped": st.fragments_skipped, "refused": output.frames_refused, "backlog": st.backlog_fragments,
              "output_is_picamera2_output": isinstance(output, __import__("picamera2.outputs").outputs.Output)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
