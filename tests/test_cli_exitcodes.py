"""One exit-code table for `gffs` and `gffs-admin` (gffs/exitcodes.py, README "Exit codes").

Each case runs the real command and checks its exit code and that stderr is one
line: config mistakes found when the backends open, a bucket that does not exist,
an endpoint where nothing listens (fail early, say it once), and `optional = true`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_s3 import TEST_REGION
from gffs.exitcodes import EXIT_FAILED, EXIT_OK, EXIT_USAGE, TABLE
from gffs.index import Index
from gffs.mounts import find_mount
from mountutil import FUSE_AVAILABLE, SKIP_REASON, gffs_cli

REPO = Path(__file__).resolve().parent.parent
needs_fuse = pytest.mark.skipif(not FUSE_AVAILABLE, reason=SKIP_REASON)


def admin(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gffs.cli.admin", *args], capture_output=True,
                          text=True, timeout=120)


def one_line(res: subprocess.CompletedProcess, prog: str) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: "), res.stderr
    return lines[0]


@pytest.fixture
def mnt(tmp_path):
    """A mount point for mounts that must fail; unmounted should one succeed after all."""
    path = tmp_path / "mnt"
    yield str(path)
    if find_mount(str(path)) is not None:
        gffs_cli("umount", str(path), "--timeout", "30")


def nothing_listens() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def config(tmp_path: Path, backend: str, extra_store: str = "") -> Path:
    path = tmp_path / "gffs.toml"
    path.write_text(f'[store]\ndata_dir = "{tmp_path / "data"}"\nbackend_timeout = 10\n'
                    f'{extra_store}\n[backends.local]\ntype = "local"\npath = "{tmp_path / "local"}"\n'
                    f'\n[backends.s3]\n{backend}\n')
    Index(tmp_path / "data" / "index").close()   # a store exists: gffs-admin gets to its backends
    return path


def s3(buckets: list[str], endpoint: str, more: str = "") -> str:
    return (f'type = "s3"\nbuckets = {json.dumps(buckets)}\nendpoint_url = "{endpoint}"\n'
            f'region = "{TEST_REGION}"\ntimeout = 3\n{more}')


CONFIG_MISTAKES = {
    "unknown-s3-option": ('type = "s3"\nbuckets = ["gf-x"]\nbucket_policy = "x"\n',
                          "unknown option 'bucket_policy'"),
    "missing-buckets": ('type = "s3"\nregion = "us-east-1"\n', "'buckets' is required"),
    "credentials-in-endpoint": ('type = "s3"\nbuckets = ["gf-x"]\n'
                                'endpoint_url = "http://key:pass@127.0.0.1:9"\n',
                                "must not contain credentials"),
    "unknown-backend-type": ('type = "tape"\n', "no storage backend of type 'tape'"),
}


def test_readme_documents_the_table():
    readme = (REPO / "README.md").read_text()
    for code, meaning in TABLE.items():
        assert f"| {code} | {meaning} |" in readme, code


@needs_fuse
@pytest.mark.parametrize("case", CONFIG_MISTAKES)
def test_config_mistake_found_when_backends_open_exits_2_for_both(tmp_path, mnt, case, s3_env):
    table, says = CONFIG_MISTAKES[case]
    cfg = config(tmp_path, table)
    res = gffs_cli("mount", mnt, "--config", str(cfg))
    assert res.returncode == EXIT_USAGE and says in one_line(res, "gffs")
    assert "key:pass" not in res.stderr
    res = admin("--config", str(cfg), "status")
    assert res.returncode == EXIT_USAGE and says in one_line(res, "gffs-admin")


@needs_fuse
def test_mount_of_a_bucket_that_does_not_exist_exits_2_in_one_line(tmp_path, mnt, moto_server,
                                                                   s3_buckets):
    real = s3_buckets(1)
    cfg = config(tmp_path, s3([*real, "gf-not-created"], moto_server))
    res = gffs_cli("mount", mnt, "--config", str(cfg))
    assert res.returncode == EXIT_USAGE
    assert "bucket 'gf-not-created' does not exist" in one_line(res, "gffs")
    status = admin("--config", str(cfg), "status", "--json")
    assert status.returncode == EXIT_OK, status.stderr
    health = json.loads(status.stdout)["backends"]["s3"]["health"]
    assert "'gf-not-created' does not exist" in health


@needs_fuse
def test_mount_with_nothing_listening_at_endpoint_url_exits_2_in_one_line(tmp_path, mnt, s3_env):
    cfg = config(tmp_path, s3(["gf-any"], nothing_listens()))
    res = gffs_cli("mount", mnt, "--config", str(cfg))
    assert res.returncode == EXIT_USAGE
    assert "unreachable" in one_line(res, "gffs") and "optional = true" in res.stderr
    status = admin("--config", str(cfg), "status")
    assert status.returncode == EXIT_OK, status.stderr
    line, = [ln for ln in status.stdout.splitlines() if ln.startswith("backend    s3 ")]
    assert "unusable" in line and "unreachable" in line     # today's status said "ok"


def test_optional_backend_may_be_down_at_mount(tmp_path, mount_factory, s3_env):
    cfg = config(tmp_path, s3(["gf-any"], nothing_listens(), "optional = true\n"),
                 "backend_retry_max = 2\n")
    cfg.write_text(cfg.read_text() + '\n[placement]\ncopies = 1\nbackends = ["local", "s3"]\n')
    m = mount_factory(config=cfg)      # mounts; the repair queue catches s3 up once it is there
    (m.path / "flow").mkdir()
    (m.path / "flow" / "a.jpg").write_bytes(b"\xff\xd8" + bytes(5000))
    assert (m.path / "flow" / "a.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert "optional backend unusable" in m.log_text()


@needs_fuse
def test_second_mount_of_a_store_exits_1(mount_factory, mnt):
    m = mount_factory()
    res = gffs_cli("mount", mnt, "--data-dir", str(m.data_dir))
    assert res.returncode == EXIT_FAILED and "in use" in one_line(res, "gffs")


def test_bad_toml_exits_2_for_both(tmp_path, mnt):
    cfg = tmp_path / "gffs.toml"
    cfg.write_text("[store\n")
    res = admin("--config", str(cfg), "status")
    assert res.returncode == EXIT_USAGE and "not valid TOML" in one_line(res, "gffs-admin")
    res = gffs_cli("mount", mnt, "--config", str(cfg))
    assert res.returncode == EXIT_USAGE and "not valid TOML" in one_line(res, "gffs")
