"""image-build/install.sh: shellcheck-clean, and run for real (useradd, python3 -m venv, pip) through chroot into a
throwaway system tree: twice leaves the same tree, an upgrade keeps the configuration and the fragment log.

The throwaway tree: this machine's /usr bind-mounted read-only (a private mount namespace, so nothing leaks), its own
/etc (copies of passwd, group, shadow...), /opt, /var. The script's `--root` mode runs its target-side commands with
chroot, exactly as in a debootstrap tree; `--no-deps` skips the wheel's dependencies (PyPI downloads).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "image-build" / "install.sh"


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed: apt-get install shellcheck"
    r = subprocess.run([shellcheck, "--shell=bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_refuses_bad_arguments_with_one_line(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "--root", str(tmp_path), str(tmp_path / "missing.whl")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == f"install.sh: no such wheel: {tmp_path / 'missing.whl'}"


def build_wheel(tmp_path: Path, version: str | None = None) -> Path:
    """A real wheel of this source tree (with build isolation: pip fetches setuptools like any build would)."""
    src = tmp_path / f"src-{version or 'head'}"
    shutil.copytree(REPO / "kvs_edge", src / "kvs_edge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", src)
    readme = REPO / "README.md"
    (src / "README.md").write_text(readme.read_text() if readme.exists() else "kvs-edge\n")
    if version:
        init = src / "kvs_edge" / "__init__.py"
        text = init.read_text()
        assert '__version__ = "' in text
        init.write_text(text.split('__version__ = "')[0] + f'__version__ = "{version}"\n')
    out = tmp_path / f"dist-{version or 'head'}"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root (useradd, chroot, mount in a private namespace): run it as root, as CI does "
                    "(sudo make test)")
    for tool in ("unshare", "chroot", "mount"):
        assert shutil.which(tool), f"{tool} is missing"
    base = tmp_path_factory.mktemp("install")
    root = base / "root"
    for d in ("usr", "etc", "dev", "tmp", "var/tmp", "var/lib"):
        (root / d).mkdir(parents=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "var" / "tmp", 0o1777)
    for d in ("bin", "sbin", "lib", "lib64"):
        if Path("/" + d).is_symlink():
            (root / d).symlink_to(os.readlink("/" + d))
    for f in ("passwd", "group", "shadow", "gshadow", "login.defs", "nsswitch.conf", "ld.so.cache"):
        if Path("/etc", f).exists():
            shutil.copy2(Path("/etc", f), root / "etc" / f)
    (root / "dev" / "null").touch()
    usr_local = base / "usr-local"  # the tree's own /usr/local (the rest of /usr is this machine's, read-only)
    usr_local.mkdir()
    return {"base": base, "root": root, "usr_local": usr_local}


def install(world, wheel: Path, *extra: str) -> subprocess.CompletedProcess:
    root = world["root"]
    shell = (
        "set -e\n"
        f"mount --bind /usr '{root}/usr'\n"
        f"mount -o remount,bind,ro '{root}/usr'\n"
        f"mount --bind '{world['usr_local']}' '{root}/usr/local'\n"
        f"mount --bind /dev/null '{root}/dev/null'\n"
        f"exec bash '{SCRIPT}' --root '{root}' --no-deps {' '.join(extra)} '{wheel}'\n"
    )
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "bash", "-c", shell],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def in_tree(world, *command: str) -> str:
    root = world["root"]
    shell = (f"set -e; mount --bind /usr '{root}/usr'; mount --bind '{world['usr_local']}' '{root}/usr/local'; "
             f"mount --bind /dev/null '{root}/dev/null'; exec chroot '{root}' \"$@\"")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "bash", "-c", shell, "sh", *command],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def snapshot(world) -> dict[str, tuple]:
    """Every path of the tree with type, mode, owner and content (compiled .pyc: presence only, they embed mtimes)."""
    out = {}
    for top, prefix in ((world["root"], ""), (world["usr_local"], "usr/local/")):
        for dirpath, dirnames, filenames in os.walk(top):
            rel_dir = os.path.relpath(dirpath, top)
            if rel_dir == "." and prefix == "":
                dirnames.remove("usr")  # the mount point of this machine's /usr
            for name in dirnames + filenames:
                path = Path(dirpath, name)
                rel = prefix + os.path.normpath(os.path.join(rel_dir, name))
                st = path.lstat()
                if stat.S_ISLNK(st.st_mode):
                    content = os.readlink(path)
                elif stat.S_ISREG(st.st_mode) and not name.endswith(".pyc"):
                    content = hashlib.sha256(path.read_bytes()).hexdigest()
                else:
                    content = None
                out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, content)
    return out


@pytest.fixture(scope="module")
def installed_twice(world):
    wheel = build_wheel(world["base"])
    example = REPO / "config" / "kvs-edge.yaml"
    first = install(world, wheel, "--config-example", f"'{example}'")
    tree1 = snapshot(world)
    second = install(world, wheel, "--config-example", f"'{example}'")
    tree2 = snapshot(world)
    return {"wheel": wheel, "first": first, "second": second, "tree1": tree1, "tree2": tree2}


def test_first_install_lays_out_the_system(world, installed_twice):
    root = world["root"]
    passwd = (root / "etc" / "passwd").read_text().splitlines()
    (entry,) = [line for line in passwd if line.startswith("kvs-edge:")]
    uid, gid, home, shell = entry.split(":")[2], entry.split(":")[3], entry.split(":")[5], entry.split(":")[6]
    assert int(uid) < 1000 and home == "/var/lib/kvs-edge" and shell == "/usr/sbin/nologin"  # a system user
    groups = {line.split(":")[0]: line.split(":") for line in (root / "etc" / "group").read_text().splitlines()}
    assert "kvs-edge" in groups["video"][3].split(",")
    assert groups["kvs-edge"][2] == gid

    config = root / "etc" / "kvs-edge" / "config.yaml"
    assert config.read_bytes() == (REPO / "config" / "kvs-edge.yaml").read_bytes()
    assert stat.S_IMODE(config.stat().st_mode) == 0o640 and config.stat().st_gid == int(gid) and config.stat().st_uid == 0

    for unit in ("kvs-edge.service", "kvs-edge-boot-config.service"):
        assert (root / "etc/systemd/system" / unit).read_bytes() == (REPO / "systemd" / unit).read_bytes()
        link = root / "etc/systemd/system/multi-user.target.wants" / unit
        assert os.readlink(link) == f"/etc/systemd/system/{unit}"

    cfg = (root / "opt/kvs-edge/venv/pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg  # python3-picamera2 from apt stays importable
    assert os.readlink(world["usr_local"] / "bin" / "kvs-edge") == "/opt/kvs-edge/venv/bin/kvs-edge"
    # the installed command runs inside the tree, from the venv, on the PATH
    assert in_tree(world, "/usr/local/bin/kvs-edge", "--version").strip() == "kvs-edge 0.1.0"
    assert not list((root / "var" / "tmp").iterdir())  # the staged wheel is cleaned up
    assert "created the system user kvs-edge" in installed_twice["first"].stdout


def test_second_run_leaves_the_same_tree(installed_twice):
    tree1, tree2 = installed_twice["tree1"], installed_twice["tree2"]
    assert set(tree1) == set(tree2)
    changed = [path for path in tree1 if tree1[path] != tree2[path]]
    assert changed == []
    assert "created" not in installed_twice["second"].stdout
    assert "kept the existing /etc/kvs-edge/config.yaml" in installed_twice["second"].stdout


def test_upgrade_keeps_the_configuration_and_the_fragment_log(world, installed_twice):
    root = world["root"]
    config = root / "etc" / "kvs-edge" / "config.yaml"
    config.write_text("stream:\n  name: my-own-cam\n")  # the owner's edits
    log_dir = root / "var" / "lib" / "kvs-edge" / "buffer"
    log_dir.mkdir(parents=True)
    (log_dir / "segment-000001.log").write_bytes(b"\x1a\x45\xdf\xa3 video not yet persisted")

    newer = build_wheel(world["base"], version="0.2.0")
    install(world, newer, "--config-example", f"'{REPO / 'config' / 'kvs-edge.yaml'}'")

    assert in_tree(world, "/usr/local/bin/kvs-edge", "--version").strip() == "kvs-edge 0.2.0"
    assert config.read_text() == "stream:\n  name: my-own-cam\n"
    assert (log_dir / "segment-000001.log").read_bytes() == b"\x1a\x45\xdf\xa3 video not yet persisted"
    passwd = (root / "etc" / "passwd").read_text().splitlines()
    assert len([line for line in passwd if line.startswith("kvs-edge:")]) == 1
