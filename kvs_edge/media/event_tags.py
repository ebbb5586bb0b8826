"""Fragment metadata for an uploaded event (pure): the user tag and the service's event tags, laid out as the official
C producer SDK writes them.

The user tag `kvs-edge.event` = the event's label (`motion`, or the label given to `kvs-edge trigger`) goes on every
fragment of an event, as its own Tags > Tag > SimpleTag, before the fragment's cluster (docs/kvs-putmedia.md section 4:
"user metadata tags before the cluster they belong to").

The service's tags (kvs-service-facts.md: names must not start with "AWS" "except the service's own event tags"), from
the SDK's `putKinesisVideoEventMetadata` (amazon-kinesis-video-streams-pic v1.2.0, src/client/src/Stream.c, and
`mkvgenGenerateTagsChain` in src/mkvgen/src/MkvGenerator.c):
- STREAM_EVENT_TYPE_NOTIFICATION: one Tags > Tag holding SimpleTag(AWS_KINESISVIDEO_NOTIFICATION, "") followed by the
  event's custom SimpleTags in the same Tag (parent MKV_TREE_SIMPLE, the Tag's size increased by
  mkvgenIncreaseTagsTagSize);
- STREAM_EVENT_TYPE_IMAGE_GENERATION: its own Tags > Tag holding SimpleTag(AWS_KINESISVIDEO_IMAGE_GENERATION, "")
  and the same custom SimpleTags after it;
- both events are one-shot (not persistent): they go before one cluster only. kvs-edge puts them on the fragment the
  event's first trigger falls in, so one notification per event; the user tag alone marks the others.
When an event Tag carries the custom pair, the separate user Tags is not written again for that fragment.

KVS counts every SimpleTag against "at most 10 metadata tags" per fragment (docs/kvs-putmedia.md section 3; more is
error 4009 and the fragment is lost), the static `metadata:` tags already in the fragment included. `event_tag_count`
is what an event adds at most (config.py checks `metadata:` against it); `fragment_tags(room=...)` never writes more
than the room left: the image tag goes first, then the notification, the user tag last.
"""

from __future__ import annotations

from kvs_edge.media.fragment_tags import check_tag, tag_element
from kvs_edge.media.mkv import (MAX_TAGS_PER_FRAGMENT, SIMPLE_TAG, TAG, TAG_NAME, TAG_STRING, TAGS, element,
                                string_element)

EVENT_TAG = "kvs-edge.event"
NOTIFICATION = "AWS_KINESISVIDEO_NOTIFICATION"
IMAGE_GENERATION = "AWS_KINESISVIDEO_IMAGE_GENERATION"


def _simple(name: str, value: str) -> bytes:
    return element(SIMPLE_TAG, string_element(TAG_NAME, name) + string_element(TAG_STRING, value))


def _event_tags(service_name: str, custom: list[tuple[str, str]]) -> bytes:
    return element(TAGS, element(TAG, _simple(service_name, "") + b"".join(_simple(n, v) for n, v in custom)))


def event_tag_count(*, notify: bool, images: bool) -> int:
    """The most tags (SimpleTags) an event writes on one fragment: its first one carries the service's tags."""
    return max(1, 2 * notify + 2 * images)


def fragment_tags(label: str, *, first: bool, notify: bool, images: bool,
                  room: int = MAX_TAGS_PER_FRAGMENT) -> bytes:
    """The Tags elements to write before a fragment of an event labelled `label`; `first`: the fragment holding the
    event's first trigger (the one that carries the service's one-shot event tags); `room`: how many tags the
    fragment may still take (10 less the ones it already has), never exceeded (docs/kvs-putmedia.md section 3)."""
    label = label.encode("utf-8")[:256].decode("utf-8", "ignore") or "trigger"
    check_tag(EVENT_TAG, label)
    custom = [(EVENT_TAG, label)]
    notify, images = first and notify, first and images
    if notify and images and room < 4:
        images = False  # the notification (and the user tag in it) is worth more than the images
    if room < 2:
        notify = images = False
    out = b""
    if notify:
        out += _event_tags(NOTIFICATION, custom)
    if images:
        out += _event_tags(IMAGE_GENERATION, custom)
    if out:
        return out
    return tag_element(EVENT_TAG, label) if room >= 1 else b""
