"""The command-line tools start light and end a Ctrl-C during startup in one line.

Checked through sys.modules of a fresh interpreter (not by timing): web3 (py_ecc builds
pairing tables at import), the Google API client and boto3 cost seconds, and only the
commands and backends that use them may load them. benchmarks/bench_startup.py
measures the time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("web3", "eth_account", "googleapiclient", "boto3", "botocore")
REPO = Path(__file__).resolve().parent.parent


def loaded_after(code: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """Heavy modules in sys.modules after running *code* in a fresh interpreter."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_importing_the_clis_and_building_their_parsers_loads_no_heavy_library():
    assert loaded_after("import contextlib, io, gffs.cli.admin, gffs.cli.main\n"
                        "for cli in (gffs.cli.admin, gffs.cli.main):\n"
                        "    with contextlib.suppress(SystemExit), "
                        "contextlib.redirect_stdout(io.StringIO()):\n"
                        "        cli.main(['--help'])") == []


def test_admin_status_of_a_local_store_loads_no_heavy_library(tmp_path):
    from gffs.index import Index
    Index(tmp_path / "index").close()
    assert loaded_after("import contextlib, io\nfrom gffs.cli import admin\n"
                        "with contextlib.redirect_stdout(io.StringIO()):\n"
                        f"    assert admin.main(['--data-dir', {str(tmp_path)!r}, 'status']) == 0"
                        ) == []


def test_admin_status_loads_neither_chunk_store_nor_crypto_nor_entry_points(tmp_path):
    """Beyond trio, LMDB and the index, status of a local store needs nothing: the chunk
    store and rebalance planning (only --full), cryptography (nothing encrypts) and
    importlib.metadata (built-in backend types) cost 0.1-0.4 s each on a loaded machine."""
    from gffs.index import Index
    Index(tmp_path / "index").close()
    light = ("gffs.chunks.store", "gffs.maintenance.rebalance", "cryptography",
             "importlib.metadata")
    assert loaded_after("import contextlib, io\nfrom gffs.cli import admin\n"
                        "with contextlib.redirect_stdout(io.StringIO()):\n"
                        f"    assert admin.main(['--data-dir', {str(tmp_path)!r}, 'status']) == 0",
                        light) == []


def test_the_daemon_loads_only_the_backends_its_config_names(tmp_path):
    """What `gffs mount` imports before serving: the daemon and a Store of local backends.
    Nor Pillow (about 0.3 s of every mount): only the analysis worker process decodes."""
    code = ("from gffs import daemon\nfrom gffs.config import load_config\n"
            "from gffs.store import Store\n"
            f"Store(load_config(None, {str(tmp_path)!r}), 'test').close()")
    assert loaded_after(code, HEAVY + ("PIL", "pillow_heif")) == []


# Ctrl-C during startup ---------------------------------------------------------------------

INTERRUPT_AT_IMPORT = """
import os, signal, sys

class InterruptAt:
    '''Deliver SIGINT (as a Ctrl-C would) the moment module {target!r} starts to load.'''
    def find_spec(self, name, path=None, target=None):
        if name == {target!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, InterruptAt())
sys.argv = ["{prog}", *{argv!r}]
import runpy
runpy.run_module("{module}", run_name="__main__")
"""


@pytest.mark.parametrize("module, prog, argv, target", [
    ("gffs.cli.admin", "gffs-admin", ["status"], "trio"),
    ("gffs.cli.admin", "gffs-admin", ["status"], "gffs.config"),
    ("gffs.cli.admin", "gffs-admin", ["nft", "refresh", "/nonexistent"], "web3"),
    ("gffs.cli.main", "gffs", ["mount", "/nonexistent/mnt"], "gffs.config"),
], ids=["admin-at-trio", "admin-at-config", "admin-nft-at-web3", "gffs-at-config"])
def test_ctrl_c_while_starting_is_one_line_and_130(tmp_path, module, prog, argv, target):
    argv = ["--data-dir", str(tmp_path), *argv] if prog == "gffs-admin" else argv
    code = INTERRUPT_AT_IMPORT.format(target=target, prog=prog, argv=argv, module=module)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert res.returncode == 130, res.stderr
    assert res.stderr == f"{prog}: interrupted\n"
