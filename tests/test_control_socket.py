"""The control socket on a real Unix socket: permissions, requests, errors, a stale socket left by a killed process."""

import json
import os
import socket
import stat

import pytest

from kvs_edge.service.control_socket import ControlError, ControlServer, request


@pytest.fixture
def server(tmp_path):
    calls = []

    def trigger(req):
        if req.get("label") == "bad":
            raise ValueError("bad label")
        calls.append(req)
        return {"label": req.get("label")}

    srv = ControlServer(tmp_path / "run" / "control.sock", {"trigger": trigger, "status": lambda r: {"status": {}}})
    srv.start()
    srv.calls = calls
    yield srv
    srv.stop()


def test_owner_only_and_answers_requests(server):
    st = os.stat(server.path)
    assert stat.S_ISSOCK(st.st_mode) and (st.st_mode & 0o777) == 0o600
    assert request(server.path, {"cmd": "trigger", "label": "door"}) == {"ok": True, "label": "door"}
    assert server.calls == [{"cmd": "trigger", "label": "door"}]
    assert request(server.path, {"cmd": "status"}) == {"ok": True, "status": {}}


def test_errors_are_one_line_answers(server):
    assert request(server.path, {"cmd": "trigger", "label": "bad"}) == {"ok": False, "error": "bad label"}
    assert "unknown command" in request(server.path, {"cmd": "reboot"})["error"]
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(server.path)
        s.sendall(b"not json\n")
        assert json.loads(s.makefile().readline()) == {"ok": False, "error": "not a JSON request"}


def test_a_stale_socket_is_replaced_and_a_missing_one_is_a_clear_error(tmp_path):
    path = tmp_path / "c.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # what a kill -9 leaves behind
    srv = ControlServer(path, {"status": lambda r: {}}).start()
    try:
        assert request(path, {"cmd": "status"}) == {"ok": True}
    finally:
        srv.stop()
    assert not path.exists()
    with pytest.raises(ControlError, match="not running"):
        request(path, {"cmd": "status"})


def test_refuses_to_replace_a_file_that_is_not_a_socket(tmp_path):
    path = tmp_path / "c.sock"
    path.write_text("keep me")
    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(path, {}).start()
    assert path.read_text() == "keep me"


def test_each_camera_of_a_list_has_its_own_socket():
    from kvs_edge.config import parse_config
    from kvs_edge.event_service import camera_label, control_socket_for
    single = parse_config({"stream": {"name": "cam"}}, "c.yaml")
    assert camera_label(single) is None
    assert control_socket_for("/run/kvs-edge/control.sock", None) == "/run/kvs-edge/control.sock"
    assert control_socket_for("/run/kvs-edge/control.sock", "door") == "/run/kvs-edge/control.door.sock"


def test_cameras_list_gives_each_unit_a_socket_of_its_own():
    from kvs_edge.camera_set import camera_config
    from kvs_edge.config import parse_config
    from kvs_edge.event_service import camera_label, control_socket_for
    cfg = parse_config({"stream": {"region": "eu-west-1"},
                        "cameras": [{"stream": {"name": "a"}, "source": {"type": "testpattern"}},
                                    {"name": "door", "stream": {"name": "b"}, "source": {"type": "testpattern"}}]},
                       "c.yaml")
    paths = [control_socket_for(cfg.events.control_socket, camera_label(camera_config(cfg, cam, 16 << 20)))
             for cam in cfg.cameras]
    assert paths == ["/run/kvs-edge/control.sock", "/run/kvs-edge/control.door.sock"]
