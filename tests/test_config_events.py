"""The settings of issue 15: upload.mode/schedule/timezone, buffer.retain_seconds, the events section."""

import pytest

from kvs_edge.config import ConfigError, EventsConfig, ScheduleWindow, parse_config


def cfg(**sections):
    data = {"stream": {"name": "cam"}}
    for k, v in sections.items():
        data[k] = v
    return parse_config(data, "c.yaml")


def test_defaults_are_continuous_with_no_retention():
    c = cfg()
    assert c.upload.mode == "continuous" and c.upload.schedule == () and c.upload.timezone == "UTC"
    assert c.buffer.retain_seconds is None and c.events == EventsConfig()


def test_a_full_events_and_schedule_configuration():
    c = cfg(upload={"mode": "schedule", "schedule": [{"cron": "0 * * * *", "minutes": 10}],
                    "timezone": "Europe/Berlin"},
            buffer={"retain_seconds": 3600},
            events={"pre_seconds": 10, "post_seconds": 20, "notify": True, "images": True, "motion": True,
                    "motion_roi": [0.25, 0.5, 0.5, 0.5], "control_socket": "/tmp/x.sock"})
    assert c.upload.schedule == (ScheduleWindow("0 * * * *", 10),)
    assert c.events.motion_roi == (0.25, 0.5, 0.5, 0.5) and c.events.notify and c.buffer.retain_seconds == 3600


@pytest.mark.parametrize("sections, message", [
    ({"upload": {"mode": "sometimes"}}, "upload.mode"),
    ({"upload": {"mode": "schedule"}}, "upload.schedule: required when upload.mode is schedule"),
    ({"upload": {"schedule": [{"cron": "61 * * * *", "minutes": 5}]}}, "window 1: minute field"),
    ({"upload": {"schedule": [{"cron": "0 * * * *", "minutes": 0}]}}, "minutes must be a whole number"),
    ({"upload": {"schedule": "0 * * * *"}}, "expected a list of windows"),
    ({"upload": {"timezone": "Moon/Base"}}, "unknown time zone"),
    ({"upload": {"mode": "events"}, "buffer": {"retain_seconds": 3}, "events": {"pre_seconds": 5}},
     "buffer.retain_seconds: 3 is shorter than events.pre_seconds"),
    ({"events": {"motion_roi": [0.5, 0.5, 0.8, 0.2]}}, "inside the picture"),
    ({"events": {"motion_threshold": 0}}, "events.motion_threshold"),
])
def test_mistakes_get_one_line_each(sections, message):
    with pytest.raises(ConfigError) as e:
        cfg(**sections)
    assert any(message in m for m in e.value.messages), e.value.messages


def test_metadata_tags_and_event_tags_together_stay_within_ten_per_fragment():
    six = {f"k{i}": "v" for i in range(6)}
    c = cfg(upload={"mode": "events"}, events={"notify": True, "images": True}, metadata=six)  # 6 + 4 = 10
    assert len(c.metadata.tags) == 6
    with pytest.raises(ConfigError) as e:
        cfg(upload={"mode": "events"}, events={"notify": True, "images": True}, metadata=six | {"k6": "v"})
    (line,) = e.value.messages
    assert line.startswith("c.yaml: metadata: 7 tags (k0, k1, k2, k3, k4, k5, k6) plus the event's 4")
    assert "remove 1" in line
    assert "AWS_KINESISVIDEO_IMAGE_GENERATION" in line and "4009" in line
    nine = {f"k{i}": "v" for i in range(9)}
    assert len(cfg(upload={"mode": "events"}, metadata=nine).metadata.tags) == 9  # + the user tag alone: 10
    with pytest.raises(ConfigError, match="plus the event's 2"):
        cfg(upload={"mode": "events"}, events={"notify": True}, metadata=nine)
    assert len(cfg(events={"notify": True, "images": True}, metadata=nine).metadata.tags) == 9  # continuous: none


def test_a_camera_in_events_mode_brings_the_tag_check():
    nine = {f"k{i}": "v" for i in range(9)}
    with pytest.raises(ConfigError, match="metadata: 9 tags"):
        parse_config({"cameras": [{"name": "a", "stream": {"name": "a"}, "source": {"type": "testpattern"}},
                                  {"name": "b", "stream": {"name": "b"}, "source": {"type": "testpattern"},
                                   "upload": {"mode": "events"}}],
                      "events": {"images": True}, "metadata": nine}, "c.yaml")


def test_a_cameras_own_events_images_count_against_the_metadata_tags():
    nine = {f"k{i}": "v" for i in range(9)}
    cams = [{"name": "a", "stream": {"name": "a"}, "source": {"type": "testpattern"}, "upload": {"mode": "events"}}]
    assert len(parse_config({"cameras": cams, "metadata": nine}, "c.yaml").metadata.tags) == 9
    cams[0]["events"] = {"images": True}
    with pytest.raises(ConfigError, match="metadata: 9 tags .* plus the event's 2"):
        parse_config({"cameras": cams, "metadata": nine}, "c.yaml")
