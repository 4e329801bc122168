"""`gffs-admin index restore`: rebuild the index from a backup on a backend.

Works on an unmounted store only (it holds the store lock throughout) and needs
nothing but the config and the backends' credentials. Every piece is verified
against its SHA-256 name, the records are loaded into a new LMDB environment in
``<data_dir>/index.restoring``, the result is checked against the manifest
(store id, schema, block size, record counts), and only then renamed into place;
an index it replaces (``--force``) is kept as ``index.replaced-<time>``. A crash
at any point leaves the old index (or none) and a temporary directory the next
restore removes: never half an index.

Afterwards it lists every backend the index names and reports chunks that no
reachable backend holds (a backend missing from the config, a wiped local disk,
chunks deleted after the backup was taken) and the files they belong to.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import lmdb
import trio

from gffs.chunks import codec
from gffs.config import Config
from gffs.errors import ConfigError
from gffs.index import ChunkMap, Index, Namespace, ROOT_INO
from gffs.index.env import DB_NAMES
from gffs.index.records import from_u64
from gffs.maintenance.backup import read_versions
from gffs.maintenance.backup_format import BadBackup, PieceRef, piece_name, records
from gffs.maintenance.jobs import JobRefused
from gffs.maintenance.progress import Progress
from gffs.crypto.setup import attach_index
from gffs.store import StoreLock, open_backends
from gffs_backends.base import Backend, BackendError, ObjectMissing

FETCHES = 8             # pieces downloaded at once
EXAMPLES = 20           # affected file paths named in the report


async def restore_index(cfg: Config, source: str, progress: Progress, *, version: str | None = None,
                        force: bool = False, check: bool = True) -> dict[str, Any]:
    """Restore the index of *cfg*'s store from backend *source*; a report of what came back."""
    lock = StoreLock(cfg.lock_file)
    lock.acquire("gffs-admin index restore")
    try:
        existing = _existing_store(cfg)
        if existing is not None and not force:
            raise JobRefused(f"{cfg.index_dir} already holds an index ({existing}); restoring "
                             f"would replace it: pass --force (the current index is kept as "
                             f"{cfg.data_dir}/index.replaced-<time>)")
        backends = open_backends(cfg)
        try:
            if source not in backends:
                raise ConfigError(f"{cfg.source}: no backend named {source!r} "
                                  f"(configured: {', '.join(backends)})")
            m = await _choose(backends[source], version, existing)
            tmp, pdir = cfg.data_dir / "index.restoring", cfg.data_dir / "index.restoring-pieces"
            for d in (tmp, pdir):
                shutil.rmtree(d, ignore_errors=True)
            pdir.mkdir(parents=True)
            try:
                await _fetch(backends[source], m["pieces"], pdir, progress)
                progress.begin("index rebuild", total_items=len(m["pieces"]),
                               total_bytes=sum(p.size for p in m["pieces"]), unit="pieces")
                await trio.to_thread.run_sync(_build, tmp, m, pdir, progress)
                progress.finish_phase()
                replaced = _swap(cfg, tmp)
            finally:
                shutil.rmtree(pdir, ignore_errors=True)
                shutil.rmtree(tmp, ignore_errors=True)
            result: dict[str, Any] = {"restored": m["version"], "from": source,
                                      "store_id": m["store_id"], "tables": m["tables"],
                                      "replaced": str(replaced) if replaced else None}
            if check:
                result["check"] = await check_locations(cfg, backends, progress)
            return result
        finally:
            for b in backends.values():
                await b.close()
    finally:
        lock.release()


def _existing_store(cfg: Config) -> str | None:
    """A description of the index already in place, or None when there is none."""
    if not (cfg.index_dir / "data.mdb").exists():
        return None
    try:
        index = Index(cfg.index_dir, readonly=True)
    except ConfigError as exc:
        return f"unreadable: {exc}"
    try:
        with index.read() as txn:
            n = txn.stat(index.db["inodes"])["entries"]
        return f"store {index.store_id}, {n} inodes"
    finally:
        index.close()


async def _choose(backend: Backend, version: str | None, existing: str | None) -> dict[str, Any]:
    """The manifest to restore: *version* (or a unique prefix of it), else the newest."""
    versions, bad = await read_versions(backend)
    if not versions:
        extra = f" ({len(bad)} unreadable manifests)" if bad else ""
        raise BadBackup(f"no index backups on backend {backend.name!r}{extra}")
    if version is not None:
        hits = [v for v in versions if v == version] or [v for v in versions
                                                       if v.startswith(version)]
        if len(hits) != 1:
            raise BadBackup(f"backend {backend.name!r} holds {'no' if not hits else len(hits)} "
                            f"backup versions matching {version!r} (see gffs-admin index list)")
        return versions[hits[0]]
    stores = {m["store_id"] for m in versions.values()}
    if len(stores) > 1:
        mine = [s for s in stores if existing and s in existing]
        if len(mine) != 1:
            raise BadBackup(f"backend {backend.name!r} holds backups of {len(stores)} stores "
                            f"({', '.join(sorted(stores))}): pick one with --version "
                            f"(see gffs-admin index list)")
        versions = {v: m for v, m in versions.items() if m["store_id"] == mine[0]}
    return versions[max(versions)]


async def _fetch(backend: Backend, refs: list[PieceRef], pdir: Path, progress: Progress) -> None:
    """Download every piece, verify it against its name, keep its plaintext in *pdir*."""
    wanted = {p.sha256: p.stored for p in refs}
    progress.begin(f"index restore from {backend.name}", total_items=len(wanted),
                   total_bytes=sum(wanted.values()), unit="pieces")
    limiter = trio.CapacityLimiter(FETCHES)
    errors: list[BaseException] = []

    async def one(sha: str) -> None:
        try:
            async with limiter:
                try:
                    stored = await backend.get_meta(piece_name(sha))
                except ObjectMissing:
                    raise BadBackup(f"piece {sha[:16]} of this backup is missing on "
                                    f"{backend.name!r}; try an older --version") from None
                try:
                    plain = await trio.to_thread.run_sync(codec.decode, stored, bytes.fromhex(sha))
                except codec.CorruptChunk as exc:
                    raise BadBackup(f"piece {sha[:16]} on {backend.name!r} is damaged ({exc}); "
                                    f"try an older --version") from None
                await trio.to_thread.run_sync((pdir / sha).write_bytes, bytes(plain))
                progress.advance(1, len(stored))
        except (BadBackup, BackendError) as exc:
            errors.append(exc)
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for sha in wanted:
            nursery.start_soon(one, sha)
    if errors:
        raise errors[0]
    progress.finish_phase()


def _build(tmp: Path, m: dict[str, Any], pdir: Path, progress: Progress) -> None:
    """Load the pieces into a new environment at *tmp* (one thread) and check it."""
    index = Index(tmp, block_size=m["block_size"])
    counts: Counter[str] = Counter()
    try:
        with index.env.begin(write=True) as txn:      # drop what a new index starts with
            for table in DB_NAMES:
                txn.drop(index.db[table], delete=False)
        for ref in m["pieces"]:
            items = list(records((pdir / ref.sha256).read_bytes()))
            try:
                with index.env.begin(write=True) as txn:
                    _consumed, added = txn.cursor(db=index.db[ref.table]).putmulti(
                        items, append=True)
            except lmdb.Error as exc:
                raise BadBackup(f"piece {ref.sha256[:16]} cannot be loaded: {exc}") from None
            if added != len(items):
                raise BadBackup(f"piece {ref.sha256[:16]} holds records out of order")
            counts[ref.table] += added
            trio.from_thread.run_sync(progress.advance, 1, ref.size)
        index.sync()
    finally:
        index.close()
    for table, n in m["tables"].items():
        if counts[table] != n:
            raise BadBackup(f"table {table}: {counts[table]} records restored, "
                            f"the manifest says {n}")
    restored = Index(tmp, readonly=True)     # checks the schema version
    try:
        if restored.store_id != m["store_id"] or restored.block_size != m["block_size"]:
            raise BadBackup(f"restored index is store {restored.store_id} with "
                            f"{restored.block_size}-byte blocks; the manifest says store "
                            f"{m['store_id']}, {m['block_size']}")
    finally:
        restored.close()


def _swap(cfg: Config, tmp: Path) -> Path | None:
    """Rename the new index into place, the old one (if any) aside; fsync the directory."""
    replaced = None
    if (cfg.index_dir / "data.mdb").exists():
        replaced = cfg.data_dir / f"index.replaced-{time.strftime('%Y%m%dT%H%M%S')}"
        os.rename(cfg.index_dir, replaced)
    elif cfg.index_dir.exists():
        shutil.rmtree(cfg.index_dir)                  # a directory without an index
    os.rename(tmp, cfg.index_dir)
    fd = os.open(cfg.data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return replaced


async def check_locations(cfg: Config, backends: dict[str, Backend],
                          progress: Progress) -> dict[str, Any]:
    """Which chunks of the restored index no reachable backend holds, and whose files they are."""
    index = Index(cfg.index_dir, readonly=True)
    attach_index(backends, index)   # encrypted backends list names that map to its chunks
    try:
        cm = ChunkMap(index)
        with index.read() as txn:
            named = {loc.backend for _d, rec in cm.all_chunks(txn) for loc in rec.locations}
            orphans = txn.stat(index.db["orphans"])["entries"]
        present: dict[str, set[str]] = {}
        unreachable: dict[str, str] = {}
        for name in sorted(named & set(backends)):
            progress.begin(f"listing {name}", unit="objects")
            try:
                keys = set()
                async for info in backends[name].list():
                    keys.add(info.key)
                    progress.advance(1, info.size)
                present[name] = keys
            except BackendError as exc:
                unreachable[name] = str(exc)
        progress.finish_phase()
        lost: set[bytes] = set()
        n = degraded = unconfigured = 0
        with index.read() as txn:
            for digest, rec in cm.all_chunks(txn):
                n += 1
                key = digest.hex()
                ok = sum(1 for loc in rec.locations if key in present.get(loc.backend, ()))
                maybe = any(loc.backend in unreachable for loc in rec.locations)
                if not ok and not maybe:
                    lost.add(digest)
                    unconfigured += all(loc.backend not in backends for loc in rec.locations)
                elif ok < len(rec.locations) and not maybe:
                    degraded += 1
            files = _files_using(index, txn, lost)
        return {"chunks": n, "lost": len(lost), "lost_on_unconfigured_backends": unconfigured,
                "fewer_copies": degraded, "unreachable_backends": unreachable,
                "unknown_backends": sorted(named - set(backends)),
                "files_affected": len(files), "examples": files[:EXAMPLES],
                "orphans_to_purge": orphans}
    finally:
        index.close()


def _files_using(index: Index, txn: lmdb.Transaction, lost: set[bytes]) -> list[str]:
    """Paths of the files whose blocks include a *lost* chunk (sorted)."""
    if not lost:
        return []
    inos = {from_u64(k[:8]) for k, v in txn.cursor(db=index.db["blocks"]) if bytes(v) in lost}
    ns = Namespace(index)
    paths = []
    for key, value in txn.cursor(db=index.db["dirents"]):
        child = from_u64(value[:8])
        if child in inos:
            paths.append(_path(ns, txn, from_u64(key[:8])) + "/" +
                         bytes(key[8:]).decode(errors="replace"))
            inos.discard(child)
    paths += [f"<unlinked inode {ino}>" for ino in sorted(inos)]
    return sorted(paths)


def _path(ns: Namespace, txn: lmdb.Transaction, ino: int) -> str:
    """The path of directory *ino* (directories know their parent)."""
    parts: list[str] = []
    while ino != ROOT_INO and len(parts) < 4096:
        parent = ns.get(txn, ino).parent
        name = next((n for _c, n, child in ns.entries(txn, parent) if child == ino), b"?")
        parts.append(name.decode(errors="replace"))
        ino = parent
    return "/" + "/".join(reversed(parts)) if parts else ""
