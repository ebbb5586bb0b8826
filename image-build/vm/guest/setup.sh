#!/bin/bash
# Run at boot by kvs-edge-vmtest-setup.service (before kvs-edge.service) from the host's share /mnt/host.
# The video devices: v4l2loopback as /dev/video10, a real V4L2 capture device that delivers the pre-encoded H.264
# clip the feeder writes into it; vivid as /dev/video20, a kernel test camera that offers raw formats only.
# Then the feeder, unless the host left /mnt/host/no-feeder.
# A scenario may leave /mnt/host/setup.env (the cameras scenario): VIDEO_NRS="10 11" makes one v4l2loopback device
# and one feeder per number (the feeder of /dev/video10 is the unit vmtest-feeder, the others vmtest-feeder-N);
# SOUND=1 loads the kernel's snd-aloop loopback card and plays guest/player.py into its playback side (hw:Loopback,0),
# to be captured on its capture side (hw:Loopback,1).
set -euo pipefail
VIDEO_NRS=10
SOUND=0
# shellcheck disable=SC1091
[ -e /mnt/host/setup.env ] && . /mnt/host/setup.env
if [ "$VIDEO_NRS" = 10 ]; then
    modprobe v4l2loopback video_nr=10 card_label="vmtest H.264" exclusive_caps=1 max_buffers=8
else
    nrs=() labels=() caps=()
    for n in $VIDEO_NRS; do nrs+=("$n"); labels+=("vmtest-H.264-$n"); caps+=(1); done
    modprobe v4l2loopback devices=${#nrs[@]} "video_nr=$(IFS=,; echo "${nrs[*]}")" \
        "card_label=$(IFS=,; echo "${labels[*]}")" "exclusive_caps=$(IFS=,; echo "${caps[*]}")" max_buffers=8
fi
modprobe vivid n_devs=1 node_types=0x1 vid_cap_nr=20
if [ "$SOUND" = 1 ]; then
    modprobe snd-aloop index=0 id=Loopback pcm_substreams=1
fi
udevadm settle --timeout=30
if [ ! -e /mnt/host/no-feeder ]; then
    for n in $VIDEO_NRS; do
        bash /mnt/host/guest/start-feeder.sh "$n"
    done
fi
if [ "$SOUND" = 1 ]; then
    systemd-run --quiet --unit=vmtest-sound --collect -p Type=exec \
        /usr/bin/python3 /mnt/host/guest/player.py hw:CARD=Loopback,DEV=0 16000
fi
