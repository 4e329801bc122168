"""Index backups to the backends: consistent, versioned, incremental; automatic in the daemon.

The LMDB index is the one thing a lost machine takes with it (chunks are on the
backends). A backup serializes every table as of one read transaction (a consistent
snapshot, taken in one worker thread: LMDB transactions are thread-bound), cuts
it into content-defined pieces (backup_format.py), reading only the pieces around
the keys that changed since the last backup when those are known
(gffs/index/changes.py; otherwise a full pass of a compact copy), and uploads to each target
backend the pieces it does not hold yet, then the manifest last: a backup that
dies half-way leaves only unreferenced pieces, which the next one's pruning
deletes. Pruning keeps the newest ``index_backup_keep`` versions of this store
and deletes pieces no remaining manifest uses.

The daemon runs :func:`backup_loop` (every ``index_backup_interval`` seconds
when the index changed) and :func:`final_backup` at unmount; ``gffs-admin index
backup`` runs the ``index-backup`` job. Failures are per backend, logged and
reported; they never fail the mount.
"""

from __future__ import annotations

import logging
import os
import tempfile
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import trio

from gffs.chunks import codec
from gffs.errors import ConfigError
from gffs.maintenance.backup_format import (PIECES, VERSIONS, BadBackup, PieceRef, encode_manifest,
                                            manifest, new_version_id, parse_manifest, piece_name,
                                            version_name, version_of)
from gffs.maintenance.backup_snapshot import (CACHE_FILE, CachedPiece, save_cache,
                                              snapshot_changes)
from gffs.maintenance.backup_worker import BackupFailed, FullPass
from gffs.maintenance.jobs import EXIT_FAILED, EXIT_OK, JobRefused, job
from gffs.maintenance.progress import Progress
from gffs_backends.base import Backend, BackendError, ObjectMissing

if TYPE_CHECKING:
    from gffs.config import Config
    from gffs.store import Store

log = logging.getLogger("gffs.backup")

UPLOADS = 4                 # pieces in flight at once (all backends together)
SNAPSHOT_DIR = "index.backup-copy"  # under data_dir: the compact copy a backup is cut from


@dataclass
class _Known:
    """What one backend holds, read from its manifests once per process, then kept current."""

    manifests: dict[str, tuple[str, list[PieceRef]]]      # version -> (store id, pieces)
    pieces: dict[str, int]                                # sha256 -> stored size
    unreadable: list[str] = field(default_factory=list)   # manifests we could not parse


@dataclass
class _State:
    """Per open store: one backup at a time, and what the backends are known to hold."""

    lock: trio.Lock = field(default_factory=trio.Lock)
    known: dict[str, _Known] = field(default_factory=dict)
    txnid: int | None = None        # index transaction of the last backup that reached all targets
    pieces: dict[str, list[CachedPiece]] | None = None   # that backup's cut (None: none yet)


_STATES: "weakref.WeakKeyDictionary[Store, _State]" = weakref.WeakKeyDictionary()


def _state(store: Store) -> _State:
    st = _STATES.get(store)
    if st is None:
        st = _STATES[store] = _State()
    return st


def backup_targets(cfg: Config, backends: dict[str, Backend]) -> dict[str, Backend]:
    """The backends receiving backups: ``[store] index_backup_to``, else all of them but
    read-only ones (a share source of imported flows)."""
    names = cfg.index_backup_to or [n for n, b in backends.items()
                                    if not b.read_only]
    return {n: backends[n] for n in names if n in backends}


async def read_versions(backend: Backend) -> tuple[dict[str, dict], list[str]]:
    """Every readable manifest on *backend* by version, and the names of unreadable ones."""
    found: dict[str, dict] = {}
    bad: list[str] = []
    for name in await backend.list_meta(VERSIONS):
        vid = version_of(name)
        if vid is None:
            continue
        try:
            found[vid] = parse_manifest(await backend.get_meta(name), f"{backend.name}:{name}")
        except (BadBackup, ObjectMissing) as exc:   # incl. an encrypted one failing authentication
            log.warning("index backup: %s", exc)
            bad.append(name)
    return found, bad


async def _load_known(backend: Backend) -> _Known:
    versions, bad = await read_versions(backend)
    known = _Known({v: (m["store_id"], m["pieces"]) for v, m in versions.items()}, {}, bad)
    for _sid, refs in known.manifests.values():
        known.pieces.update((p.sha256, p.stored) for p in refs)
    return known


async def backup_index(store: Store, progress: Progress,
                       targets: dict[str, Backend] | None = None) -> dict[str, Any]:
    """Back the index up to *targets* (default: the configured ones); a result per backend."""
    targets = backup_targets(store.cfg, store.backends) if targets is None else targets
    state = _state(store)
    async with state.lock:
        failed: dict[str, str] = {}
        for name, backend in targets.items():
            if name not in state.known:
                try:
                    state.known[name] = await _load_known(backend)
                except BackendError as exc:
                    failed[name] = str(exc)
        live = {n: b for n, b in targets.items() if n not in failed}
        progress.begin("index backup", unit="pieces")
        cut: dict[str, Any] = {}
        try:
            refs, info = await _upload_snapshot(store, live, state, progress, failed, cut)
        except BaseException:
            _failed_cut(store, state, cut)
            raise
        reused = info.pop("reused", 0)
        how = info.pop("pass")
        read_s = info.pop("read_s")
        progress.finish_phase()
        vid = new_version_id()
        m = manifest(vid, store.index.store_id, store.index.block_size, info, refs)
        results = []
        for name, backend in targets.items():
            res: dict[str, Any] = {"backend": name}
            if name not in failed:
                try:
                    res.update(await _commit(backend, state.known[name], m, refs,
                                             store.cfg.index_backup_keep))
                except BackendError as exc:
                    failed[name] = str(exc)
            if name in failed:
                res["error"] = failed[name]
                log.warning("index backup to %s failed: %s", name, failed[name])
            results.append(res)
        if targets and not failed:
            state.txnid = info["txnid"]
            state.pieces = cut["pieces"]
            if how == "changes":        # (a full pass wrote it already)
                await trio.to_thread.run_sync(save_cache, store.cfg.data_dir / CACHE_FILE,
                                              state.pieces)
        elif "changes" in cut:
            store.index.changes.give_back(cut["changes"])
    return {"exit_code": EXIT_FAILED if failed or not targets else EXIT_OK,
            "pieces": len(refs), "pieces_reused": reused, "pass": how,
            "read_seconds": round(read_s, 3),
            "bytes": sum(p.size for p in refs),
            "summary": info["summary"], "backends": results}


def _failed_cut(store: Store, state: _State, cut: dict[str, Any]) -> None:
    """A backup that raised (a bug, or a piece that changed untracked): the next one is a
    full pass."""
    if "changes" in cut:
        store.index.changes.give_back(cut["changes"])
    store.index.changes.doubt()
    state.pieces = None


async def _upload_snapshot(store: Store, live: dict[str, Backend], state: _State,
                           progress: Progress, failed: dict[str, str], cut: dict[str, Any]
                           ) -> tuple[list[PieceRef], dict[str, Any]]:
    """Cut the index, streaming each piece to the uploads where it is missing.

    With the last backup's cut in memory and the changes since known (the usual case
    in a daemon), only the pieces around changed keys are read, in one short read
    transaction of the live index; their plaintexts go to an anonymous spool file and
    are uploaded after that transaction ended. Otherwise (first backup of a process,
    or any doubt) a full pass cuts a compact copy, in a worker process
    (backup_worker.py) so that the daemon never maps the whole index. *cut* receives
    the changes taken ("changes", to give back on failure) and the new cut ("pieces").
    """
    sets = [state.known[n].pieces for n in live]
    everywhere = {sha: size for sha, size in sets[0].items()
                  if all(sha in s for s in sets[1:])} if sets else {}
    send, recv = trio.open_memory_channel(2)
    info: dict[str, Any] = {}
    index = store.index

    def changed_pass(txn) -> dict[str, Any]:
        with tempfile.TemporaryFile(dir=store.cfg.data_dir) as spool:
            items: list[tuple[str, str, int, int | None]] = []

            def to_spool(table: str, sha: str, size: int, plain: Callable[[], bytes]) -> None:
                if sha in everywhere:
                    items.append((table, sha, size, None))
                else:
                    items.append((table, sha, size, spool.tell()))
                    spool.write(plain())
            found, cut["pieces"] = snapshot_changes(index, txn, cut["changes"], state.pieces,
                                                    to_spool)       # txn ends here
            spool.flush()
            for table, sha, size, at in items:
                trio.from_thread.run(send.send, (table, sha, size,
                                                 _spooled(spool.fileno(), at, size)))
        return {**found, "pass": "changes"}

    def take() -> dict[str, Any] | None:
        changes, txn = index.changes.take(index.env.begin)
        cut["changes"] = changes
        if state.pieces is not None and not changes.everything and not changes.whole:
            return changed_pass(txn)
        txn.abort()
        return None     # a full pass

    async def full_pass() -> dict[str, Any]:
        data_dir = store.cfg.data_dir
        with tempfile.TemporaryFile(dir=data_dir) as spool:
            fd = spool.fileno()
            async with FullPass(index.path, data_dir / SNAPSHOT_DIR, data_dir / CACHE_FILE,
                                frozenset(everywhere), fd, index.env) as worker:
                async for table, sha, size, at in worker.pieces():
                    stored = None if at is None else await trio.to_thread.run_sync(
                        _spooled, fd, at, size)
                    await send.send((table, sha, size, stored))
        assert worker.result is not None
        found, cut["pieces"] = worker.result
        return {**found, "pass": "full"}

    async def producer() -> None:
        async with send:
            try:
                found = await trio.to_thread.run_sync(take)
                info.update(found if found is not None else await full_pass())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass        # the consumer stopped first; its error is the one that counts

    refs: list[PieceRef] = []
    slots = trio.Semaphore(UPLOADS)

    async def upload(name: str, sha: str, stored: bytes) -> None:
        try:
            if name not in failed:
                await live[name].put_meta(piece_name(sha), stored)
                state.known[name].pieces[sha] = len(stored)
                progress.advance(1, len(stored))
        except BackendError as exc:
            failed.setdefault(name, str(exc))
        finally:
            slots.release()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            async with recv:
                async for table, sha, size, stored in recv:
                    refs.append(PieceRef(table, sha, size,
                                         len(stored) if stored is not None else everywhere[sha]))
                    if stored is None:
                        continue
                    for name in live:
                        if name not in failed and sha not in state.known[name].pieces:
                            await slots.acquire()
                            nursery.start_soon(upload, name, sha, stored)
    except* BackupFailed as group:      # the job's error says what happened, not "a nursery"
        raise group.exceptions[0] from None
    return refs, info


def _spooled(fd: int, at: int | None, size: int) -> bytes | None:
    """A piece's stored form from its plaintext in a spool file (None: not spooled, every
    target holds it). Blocking."""
    return None if at is None else codec.encode(os.pread(fd, size, at), True)[1]


async def _commit(backend: Backend, known: _Known, m: dict[str, Any], refs: list[PieceRef],
                  keep: int) -> dict:
    """Write the manifest (unless the snapshot equals this store's latest version), then prune."""
    shas = [p.sha256 for p in refs]
    mine = sorted(v for v, (sid, _r) in known.manifests.items() if sid == m["store_id"])
    if mine and [p.sha256 for p in known.manifests[mine[-1]][1]] == shas:
        out = {"version": mine[-1], "unchanged": True}
    else:
        await backend.put_meta(version_name(m["version"]), encode_manifest(m))
        known.manifests[m["version"]] = (m["store_id"], list(refs))
        out = {"version": m["version"], "unchanged": False}
    out.update(await _prune(backend, known, m["store_id"], keep))
    return out


async def _prune(backend: Backend, known: _Known, store_id: str, keep: int) -> dict[str, int]:
    """Delete this store's versions beyond *keep*, then pieces no manifest uses."""
    mine = sorted(v for v, (sid, _r) in known.manifests.items() if sid == store_id)
    for vid in mine[:-keep]:
        await backend.delete_meta(version_name(vid))
        del known.manifests[vid]
    if known.unreadable:      # a newer gffs's manifest may use pieces we cannot see
        return {"versions_deleted": max(0, len(mine) - keep), "pieces_deleted": 0}
    used = {p.sha256 for _sid, refs in known.manifests.values() for p in refs}
    doomed = [n for n in await backend.list_meta(PIECES) if n[len(PIECES):] not in used]
    for name in doomed:
        await backend.delete_meta(name)
    known.pieces = {sha: size for sha, size in known.pieces.items() if sha in used}
    return {"versions_deleted": max(0, len(mine) - keep), "pieces_deleted": len(doomed)}


async def backup_if_changed(store: Store, targets: dict[str, Backend] | None = None
                            ) -> dict[str, Any] | None:
    """One automatic backup, if the index changed since the last complete one; never raises."""
    if _state(store).txnid == store.index.env.info()["last_txnid"]:
        return None
    try:
        result = await backup_index(store, Progress(), targets)
    except Exception:       # a bug or an unexpected backend failure must not end the mount
        log.exception("index backup failed; will retry")
        return None
    for res in result["backends"]:
        if "error" not in res:
            log.info("index backed up to %s: version %s%s", res["backend"], res["version"],
                     " (unchanged)" if res["unchanged"] else "")
    return result


async def backup_loop(store: Store, interval: float) -> None:
    """Back the index up every *interval* seconds while it changes (mount daemon)."""
    if interval <= 0:
        return
    while True:
        await trio.sleep(interval)
        await backup_if_changed(store)


async def final_backup(store: Store) -> None:
    """The backup at a clean unmount, after the filesystem closed its backends: fresh ones."""
    from gffs.store import open_backends
    if store.cfg.index_backup_interval <= 0:
        return
    try:
        backends = open_backends(store.cfg, store_id=store.index.store_id)
    except ConfigError as exc:       # e.g. a credentials file gone meanwhile
        log.warning("no index backup at unmount: %s", exc)
        return
    try:
        await backup_if_changed(store, backup_targets(store.cfg, backends))
    finally:
        for b in backends.values():
            await b.close()


@job("index-backup", writes=False)
async def index_backup_job(store: Store, args: dict, progress: Progress) -> dict:
    """``gffs-admin index backup [--to NAME ...]``."""
    names = args.get("to") or None
    if names:
        unknown = [n for n in names if n not in store.backends]
        if unknown:
            raise JobRefused(f"no backend named {unknown[0]!r} "
                             f"(configured: {', '.join(store.backends)})")
    targets = {n: store.backends[n] for n in names} if names else None
    return await backup_index(store, progress, targets)


async def list_versions(backend: Backend) -> list[dict[str, Any]]:
    """The backup versions on *backend*, oldest first (``gffs-admin index list``)."""
    versions, bad = await read_versions(backend)
    out = [{"version": vid, "store_id": m["store_id"], "created": m.get("created"),
            "pieces": len(m["pieces"]), "stored_bytes": sum(p.stored for p in m["pieces"]),
            **{k: v for k, v in (m.get("summary") or {}).items() if isinstance(v, int)}}
           for vid, m in sorted(versions.items())]
    out += [{"version": name, "error": "unreadable manifest"} for name in bad]
    return out
