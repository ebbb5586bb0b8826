"""Fragment metadata (pure): the tags written before the next fragment's cluster, KVS's limits checked on entry.

Rules (docs/kvs-putmedia.md section 3, docs/kvs-service-facts.md "Ingest"): "at most 10 metadata tags; tag names at
most 128 bytes, values 256 bytes, names must not start with `AWS` (reserved)" "except the service's own event tags".
Placement (docs/kvs-putmedia.md section 4): "Tags go **between** clusters, never inside one. The producer writes ...
user metadata tags before the cluster they belong to." The official SDK writes one Tags element per tag, the persistent
ones first, then the ones queued for that fragment (tests/data/kvs-sdk/meta.session1.mkv); a persistent tag put again
with the same name replaces the old value and with an empty value removes it (PIC `putFragmentMetadata`).
"""

from __future__ import annotations

from kvs_edge.media import ebml, mkv

# The service's event tags (PIC Stream.h KVSEVENT_*_STRING): the only names starting with "AWS" a producer may write.
EVENT_TAG_NAMES = frozenset({
    "AWS_KINESISVIDEO_IMAGE_GENERATION",
    "AWS_KINESISVIDEO_IMAGE_PREFIX",
    "AWS_KINESISVIDEO_NOTIFICATION",
})


class TagError(ValueError):
    """A fragment tag KVS would reject; the message says which limit and what to do."""


def check_tag(name: object, value: object) -> None:
    """Raise TagError unless KVS accepts this tag (name, value) on a fragment."""
    if not isinstance(name, str) or not isinstance(value, str):
        raise TagError(f"fragment metadata takes strings: got name {type(name).__name__}, "
                       f"value {type(value).__name__}")
    nb = len(name.encode("utf-8"))
    if nb == 0:
        raise TagError("fragment metadata name is empty: give a name of 1 to 128 bytes")
    if nb > mkv.MAX_TAG_NAME_BYTES:
        raise TagError(f"fragment metadata name {name[:40]!r}... is {nb} bytes: KVS allows at most "
                       f"{mkv.MAX_TAG_NAME_BYTES}")
    if name.startswith("AWS") and name not in EVENT_TAG_NAMES:
        raise TagError(f"fragment metadata name {name!r} starts with 'AWS', which KVS reserves: choose another name")
    vb = len(value.encode("utf-8"))
    if vb > mkv.MAX_TAG_VALUE_BYTES:
        raise TagError(f"fragment metadata {name!r} has a value of {vb} bytes: KVS allows at most "
                       f"{mkv.MAX_TAG_VALUE_BYTES}")


def tag_element(name: str, value: str) -> bytes:
    """One Tags element holding one SimpleTag, as the SDK writes each tag."""
    return mkv.element(mkv.TAGS, mkv.element(mkv.TAG, mkv.element(mkv.SIMPLE_TAG, mkv.string_element(
        mkv.TAG_NAME, name) + mkv.string_element(mkv.TAG_STRING, value))))


class FragmentTags:
    """The tags of the next fragment: persistent ones (every fragment until removed) and queued ones (the next
    fragment only). `put` checks every limit at the call, so that nothing KVS rejects (error 4009) is ever written."""

    def __init__(self, static: dict[str, str] | None = None) -> None:
        self.persistent: dict[str, str] = {}
        self.queued: list[tuple[str, str]] = []
        for name, value in (static or {}).items():
            self.put(name, value, persistent=True)

    def count(self) -> int:
        return len(self.persistent) + len(self.queued)

    def put(self, name: str, value: str, persistent: bool = False) -> None:
        check_tag(name, value)
        if persistent and name in self.persistent:
            if value == "":
                del self.persistent[name]  # the SDK's way to remove a persistent tag
            else:
                self.persistent[name] = value
            return
        if persistent and value == "":
            return  # removing a persistent tag that is not there
        if self.count() >= mkv.MAX_TAGS_PER_FRAGMENT:
            raise TagError(f"fragment metadata {name!r} would be tag {self.count() + 1} of the next fragment: KVS "
                           f"allows at most {mkv.MAX_TAGS_PER_FRAGMENT} per fragment (error 4009); put fewer tags or "
                           f"remove a persistent one (put it again with an empty value)")
        if persistent:
            self.persistent[name] = value
        else:
            self.queued.append((name, value))

    def take(self) -> bytes:
        """The bytes to write before the next cluster (b"" when there is no tag); the queued tags are used up."""
        pairs = list(self.persistent.items()) + self.queued
        self.queued = []
        return b"".join(tag_element(n, v) for n, v in pairs)


def tags_prefix_length(data) -> int | None:
    """How many bytes of whole Tags elements `data` starts with (0 when it starts with something else); None while
    the next element's ID or a Tags element is incomplete. The session finds the cluster head after a fragment's tags
    with it."""
    pos = 0
    while True:
        got = ebml.decode_id(data, pos)
        if got is None:
            return None
        element_id, n = got
        if element_id != mkv.TAGS:
            return pos
        size = ebml.decode_size(data, pos + n)
        if size is None:
            return None
        if size[0] is None:
            raise ebml.EbmlError("a Tags element of unknown size", pos)
        end = pos + n + size[1] + size[0]
        if len(data) < end:
            return None
        pos = end


def count_tags(data) -> int:
    """How many tags (SimpleTags, the unit KVS's "at most 10 metadata tags" counts, like the emulator's 4009 check)
    the whole Tags elements `data` starts with hold; the fragment's cluster or an incomplete element ends the count."""
    count, pos = 0, 0
    while True:  # each Tags element: Tag children, each holding SimpleTags
        head = ebml.decode_id(data, pos)
        size = ebml.decode_size(data, pos + head[1]) if head is not None and head[0] == mkv.TAGS else None
        if size is None or size[0] is None or pos + head[1] + size[1] + size[0] > len(data):
            return count
        inner, stop = pos + head[1] + size[1], pos + head[1] + size[1] + size[0]
        while inner < stop:
            tid, n2 = ebml.decode_id(data, inner)
            tsize, m2 = ebml.decode_size(data, inner + n2)
            child, tag_end = inner + n2 + m2, inner + n2 + m2 + (tsize or 0)
            while tid == mkv.TAG and child < tag_end:
                sid, n3 = ebml.decode_id(data, child)
                ssize, m3 = ebml.decode_size(data, child + n3)
                count += sid == mkv.SIMPLE_TAG
                child += n3 + m3 + (ssize or 0)
            inner = tag_end
        pos = stop
