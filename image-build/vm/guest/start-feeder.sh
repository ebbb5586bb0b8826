#!/bin/bash
# Start the camera feeder of /dev/videoN (N: the first argument, 10 by default) as a transient unit (vmtest-feeder for
# /dev/video10, vmtest-feeder-N for the others) and wait until it writes frames.
set -euo pipefail
n=${1:-10}
unit=vmtest-feeder
[ "$n" = 10 ] || unit=vmtest-feeder-$n
ready=/run/$unit.ready
rm -f "$ready"
systemd-run --quiet --unit="$unit" --collect -p Type=exec \
    /usr/bin/python3 /mnt/host/guest/feeder.py "/dev/video$n" /mnt/host/clip.au "$ready"
for _ in $(seq 1 300); do
    [ -e "$ready" ] && exit 0
    systemctl -q is-active "$unit" || { journalctl -u "$unit" --no-pager | tail -n 20 >&2; exit 1; }
    sleep 0.5
done
echo "the feeder of /dev/video$n wrote no frame in 150 s" >&2
exit 1
