"""Defaults live in config.py alone (issue 18 item 1): library constructors take the values, and `upload` without
--config builds a real Config through the same parser as a file."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

from kvs_edge.commands.upload import settings
from kvs_edge.config import ConfigError, parse_config
from kvs_edge.media.fragmenter import Fragmenter
from kvs_edge.pipeline import Pipeline
from kvs_edge.sources.picamera import PicameraSource
from kvs_edge.sources.testpattern import TestPatternSource


@pytest.mark.parametrize("cls, param", [(Fragmenter, "target_ms"), (Pipeline, "fragment_seconds"),
                                        (PicameraSource, "fragment_seconds"),
                                        (TestPatternSource, "fragment_seconds")])
def test_the_fragment_length_has_no_second_home(cls, param):
    assert inspect.signature(cls).parameters[param].default is inspect.Parameter.empty


def test_upload_without_config_is_the_parsers_defaults_plus_the_command_line_and_environment():
    args = SimpleNamespace(config=None, stream="cam")
    env = {"AWS_REGION": "eu-west-1", "AWS_PROFILE": "lab", "AWS_ENDPOINT_URL": "http://127.0.0.1:4566"}
    cfg = settings(args, environ=env)
    reference = parse_config({"stream": {"name": "cam"}}, "<test>")
    assert cfg.stream == reference.stream.__class__(**{**reference.stream.__dict__, "region": "eu-west-1"})
    assert cfg.upload == reference.upload and cfg.source == reference.source
    assert (cfg.aws.credentials, cfg.aws.profile, cfg.aws.endpoint_url) == ("default", "lab", "http://127.0.0.1:4566")
    assert settings(args, environ={}).stream.region == reference.stream.region  # no AWS_REGION: the default


def test_upload_with_config_and_stream_overrides_only_the_name(tmp_path):
    from support.appliance import write_config

    path = write_config(tmp_path / "c.yaml", {"stream": {"name": "a", "fragment_seconds": 3}})
    cfg = settings(SimpleNamespace(config=str(path), stream="b"), environ={})
    assert (cfg.stream.name, cfg.stream.fragment_seconds) == ("b", 3)


def test_upload_environment_goes_through_the_same_validation():
    with pytest.raises(ConfigError) as ei:
        settings(SimpleNamespace(config=None, stream="cam"), environ={"AWS_REGION": "mars"})
    assert "stream.region" in str(ei.value) and ei.value.exit_code == 78
