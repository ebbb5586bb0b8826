#!/bin/bash
# Run at boot by kvs-edge-vmtest-setup.service (before kvs-edge.service) from the host's share /mnt/host.
# The video devices: v4l2loopback as /dev/video10, a real V4L2 capture device that delivers the pre-encoded H.264
# clip the feeder writes into it; vivid as /dev/video20, a kernel test camera that offers raw formats only.
# Then the feeder, unless the host left /mnt/host/no-feeder.
set -euo pipefail
modprobe v4l2loopback video_nr=10 card_label="vmtest H.264" exclusive_caps=1 max_buffers=8
modprobe vivid n_devs=1 node_types=0x1 vid_cap_nr=20
udevadm settle --timeout=30
if [ ! -e /mnt/host/no-feeder ]; then
    bash /mnt/host/guest/start-feeder.sh
fi
