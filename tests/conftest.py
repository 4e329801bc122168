"""Shared fixtures: a real mount that is always unmounted, testdata location."""

from __future__ import annotations

from pathlib import Path

import pytest

from mountutil import FUSE_AVAILABLE, SKIP_REASON, Mount

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"

# Each backend's servers and factories live in tests/fixtures_<name>.py.
pytest_plugins = sorted(p.stem for p in Path(__file__).parent.glob("fixtures_*.py"))


@pytest.fixture(autouse=True)
def _key_dir(tmp_path, monkeypatch):
    """Store keys (made at the first mount of an encrypted store) go to the test's own
    $XDG_CONFIG_HOME, never to the user's ~/.config/gffs; daemons inherit it."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("GFFS_KEY_PASSPHRASE", raising=False)


@pytest.fixture
def mount_factory(tmp_path):
    """Make (and always clean up) mounts: ``mount_factory(config=None, opts=None)``."""
    if not FUSE_AVAILABLE:
        pytest.skip(SKIP_REASON)
    made: list[Mount] = []

    def make(config: Path | None = None, opts: list[str] | None = None, name: str = "m") -> Mount:
        root = tmp_path / name
        root.mkdir(exist_ok=True)
        m = Mount(root, config, opts)
        made.append(m)
        return m.mount()

    yield make
    for m in made:
        m.cleanup()


@pytest.fixture
def mounted(mount_factory) -> Mount:
    """A fresh store, mounted; tests work inside flows (top-level directories)."""
    return mount_factory()


@pytest.fixture
def testdata() -> Path:
    if not TESTDATA.is_dir():
        pytest.skip(f"team test images not found at {TESTDATA} (../shared/testdata)")
    return TESTDATA


@pytest.fixture(autouse=True)
def _no_unexpected_errors(request):
    """A real mount whose log shows an unexpected traceback fails the test."""
    yield
    m = request.node.funcargs.get("mounted")
    if isinstance(m, Mount) and "Traceback" in m.log_text() and not request.node.get_closest_marker("allow_errors"):
        pytest.fail("daemon log has a traceback:\n" + m.log_tail(60))
