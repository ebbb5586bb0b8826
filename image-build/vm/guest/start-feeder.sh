#!/bin/bash
# Start the camera feeder as a transient unit and wait until it writes frames into /dev/video10.
set -euo pipefail
rm -f /run/vmtest-feeder.ready
systemd-run --quiet --unit=vmtest-feeder --collect -p Type=exec \
    /usr/bin/python3 /mnt/host/guest/feeder.py /dev/video10 /mnt/host/clip.au /run/vmtest-feeder.ready
for _ in $(seq 1 300); do
    [ -e /run/vmtest-feeder.ready ] && exit 0
    systemctl -q is-active vmtest-feeder || { journalctl -u vmtest-feeder --no-pager | tail -n 20 >&2; exit 1; }
    sleep 0.5
done
echo "the feeder wrote no frame in 150 s" >&2
exit 1
