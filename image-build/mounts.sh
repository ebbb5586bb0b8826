# shellcheck shell=bash
# Shell helpers for the image builds that work in a root file system tree (image-test.sh, vm/build-image.sh):
# sourced, not run. The caller defines die().

# Mount points at or below $1, deepest first.
mounts_under() {
    local dir
    dir=$(realpath -m "$1")
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r
}

unmount_under() {
    local m
    for m in $(mounts_under "$1"); do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
}

# Remove a tree, never through a mount (a bind-mounted /dev must not be emptied).
remove_tree() {
    [ -e "$1" ] || return 0
    unmount_under "$1"
    [ -z "$(mounts_under "$1")" ] || die "$1 is still mounted; not removing it"
    rm -rf --one-file-system "$1"
}
