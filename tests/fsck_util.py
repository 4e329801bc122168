"""Helpers for the fsck tests: a store of local backends, files written through the
Filesystem class (no FUSE), fsck run the way gffs-admin runs it on an unmounted store."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import trio

from gffs.config import Config, load_config
from gffs.fs.filesystem import Caller, Filesystem
from gffs.index import ROOT_INO, ChunkMap, Index, Namespace
from gffs.maintenance.progress import Progress
from gffs.maintenance.runner import run_job
from gffs.store import Store
from gffs_backends.local import chunk_path

USER = Caller(os.getuid(), os.getgid())


def make_config(tmp_path: Path, backends: dict[str, str] | None = None, copies: int = 2,
                extra: str = "") -> Config:
    """A config file with local backends *a* and *b* (or TOML tables given in *backends*)."""
    tables = backends or {n: f'type = "local"\npath = "{tmp_path / n}"' for n in ("a", "b")}
    text = [f'[store]\ndata_dir = "{tmp_path / "store"}"\nanalyze_images = false\n'
            'backend_timeout = 10\n']
    text += [f"[backends.{name}]\n{body}\n" for name, body in tables.items()]
    text.append(f"[placement]\ncopies = {copies}\n{extra}")
    path = tmp_path / "gffs.toml"
    path.write_text("\n".join(text))
    path.chmod(0o600)
    return load_config(path)


def populate(cfg: Config, files: dict[str, bytes], links: dict[str, str] | None = None,
             symlinks: dict[str, str] | None = None,
             xattrs: dict[str, dict[bytes, bytes]] | None = None) -> dict[str, int]:
    """Write *files* ("flow/dir/name": bytes), hard *links* (new: existing), *symlinks*
    and extended attributes (path: {name: value}); return path -> inode."""
    store = Store(cfg, "test populate")
    try:
        return trio.run(_populate, store, files, links or {}, symlinks or {}, xattrs or {})
    finally:
        store.close()


async def _populate(store: Store, files, links, symlinks, xattrs) -> dict[str, int]:
    fs = Filesystem(store.index, store.chunks, analyze_images=False)
    await fs.start(USER.uid, USER.gid)
    inos: dict[str, int] = {}

    def parent_of(path: str) -> tuple[int, bytes]:
        parts = path.split("/")
        d = ROOT_INO
        for i, part in enumerate(parts[:-1]):
            sub = "/".join(parts[:i + 1])
            if sub not in inos:
                inos[sub] = fs.mkdir(d, part.encode(), 0o755, USER)[0]
            d = inos[sub]
        return d, parts[-1].encode()

    for path, data in files.items():
        d, name = parent_of(path)
        fh, ino, _ = fs.create(d, name, 0o644, os.O_RDWR, USER)
        await fs.write(fh, 0, data)
        await fs.flush(fh)
        await fs.release(fh)
        inos[path] = ino
    for new, old in links.items():
        d, name = parent_of(new)
        fs.link(inos[old], d, name)
        inos[new] = inos[old]
    for path, target in symlinks.items():
        d, name = parent_of(path)
        inos[path] = fs.symlink(d, name, target.encode(), USER)[0]
    for path, attrs in xattrs.items():
        for name, value in attrs.items():
            fs.setxattr(inos[path], name, value)
    await fs.shutdown()
    return inos


def read_back(cfg: Config, paths: list[str]) -> dict[str, bytes]:
    """File contents through the Filesystem (reads verify every chunk's hash)."""
    store = Store(cfg, "test read")
    try:
        return trio.run(_read_back, store, paths)
    finally:
        store.close()


async def _read_back(store: Store, paths: list[str]) -> dict[str, bytes]:
    fs = Filesystem(store.index, store.chunks, analyze_images=False)
    out = {}
    for path in paths:
        ino = ROOT_INO
        for part in path.split("/"):
            ino, _ = fs.lookup(ino, part.encode())
        fh = await fs.open(ino, os.O_RDONLY)
        out[path] = await fs.read(fh, 0, fs.attr(ino).size + 1)
        await fs.release(fh)
    await fs.chunks.close()
    return out


def fsck(cfg: Config, repair: bool = False, **args) -> dict:
    """Run the fsck job on the unmounted store, as gffs-admin does."""
    return run_job(cfg, "fsck-repair" if repair else "fsck", args, Progress())


def kinds(result: dict) -> dict[str, tuple[int, int]]:
    return {k: (v["found"], v["fixed"]) for k, v in result["summary"].items()}


class Damage:
    """Direct access to a closed store's index to break it on purpose."""

    def __init__(self, cfg: Config) -> None:
        self.index = Index(cfg.index_dir)
        self.ns = Namespace(self.index)
        self.cm = ChunkMap(self.index)
        self.db = self.index.db

    def __enter__(self) -> "Damage":
        return self

    def __exit__(self, *exc) -> None:
        self.index.close()

    def chunks(self) -> list:
        with self.index.read() as txn:
            return list(self.cm.all_chunks(txn))

    def digests_of(self, ino: int) -> list[bytes]:
        with self.index.read() as txn:
            return [d for _i, d in self.cm.blocks(txn, ino)]

    def is_dir(self, ino: int) -> bool:
        with self.index.read() as txn:
            return stat.S_ISDIR(self.ns.get(txn, ino).mode)


def object_path(root: Path, digest: bytes) -> Path:
    return chunk_path(root / "chunks", digest.hex())
