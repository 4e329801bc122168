"""`gffs-admin fsck`: check the index against itself and against the backends.

Phases, each in its own snapshot so a repair made by one phase is seen by the next:

1. namespace (fsck_namespace): inodes, entries, cookies, orphans, link
   counts, parents, reachability (unreachable inodes go to ``lost+found``);
2. views (fsck_views): the .views tables recomputed from facts and attributes;
3. chunk table (fsck_chunks): refcounts against blocks and thumbnails,
   garbage, counters, unconfigured backends, interrupted moves; chunks that
   blocks name but the table lost are brought back from garbage or from
   copies found on the backends;
4. backends (fsck_backends): listings (full runs) or a slice (--incremental),
   missing/corrupt/unrecorded copies, copy counts; with --repair the chunk
   store's repair queue restores copies from good ones;
5. what could not be repaired: every chunk without a good copy, with the
   paths of the files that use it.

Two registered jobs share the code: ``fsck`` only reads (it may run beside
another job, and writes nothing but the --incremental cursor) and
``fsck-repair`` writes (it runs alone).
"""

from __future__ import annotations

from typing import Any

import trio

from gffs.maintenance.fsck_backends import BackendCheck, Options
from gffs.maintenance.fsck_chunks import ChunkCheck, users_of
from gffs.maintenance.fsck_namespace import NamespaceCheck, paths_of
from gffs.maintenance.fsck_report import Finding, Report
from gffs.maintenance.fsck_views import ViewCheck
from gffs.maintenance.fsck_worker import ScanWorker
from gffs.maintenance.jobs import job
from gffs.maintenance.progress import Progress
from gffs.store import Store


def options(args: dict[str, Any], repair: bool) -> Options:
    """Job arguments (from the CLI or the control socket) -> Options, checked."""
    opts = Options(repair=repair, verify=bool(args.get("verify_data")),
                   incremental=bool(args.get("incremental")))
    if args.get("chunks") is not None:
        opts.max_chunks = int(args["chunks"])
    if args.get("time_limit") is not None:
        opts.time_limit = float(args["time_limit"])
    if args.get("min_age") is not None:
        opts.min_age = float(args["min_age"])
    if opts.max_chunks < 1 or (opts.time_limit is not None and opts.time_limit <= 0) \
            or opts.min_age < 0:
        raise ValueError("--chunks and --time-limit must be positive, --min-age not negative")
    return opts


@job("fsck", writes=False)
async def fsck_job(store: Store, args: dict, progress: Progress) -> dict:
    return await run_fsck(store, options(args, repair=False), progress)


@job("fsck-repair", writes=True)
async def fsck_repair_job(store: Store, args: dict, progress: Progress) -> dict:
    return await run_fsck(store, options(args, repair=True), progress)


async def run_fsck(store: Store, opts: Options, progress: Progress) -> dict:
    report = Report(progress.note)
    index = store.index
    with index.read() as txn:  # rows each scan visits (its progress total)
        rows = {name: txn.stat(index.db[name])["entries"]
                for name in ("inodes", "dirents", "dircookies", "blocks", "chunks")}
    ns_rows = rows["inodes"] + 2 * rows["dirents"] + rows["dircookies"]

    ccheck = ChunkCheck(store, report, lambda ino: None)
    async with ScanWorker(index.path, ccheck.ctx, index.env) as worker:
        nscheck = NamespaceCheck(index, report)
        ns = await worker.scan(progress, "checking the namespace", ns_rows, "namespace", report)
        if opts.repair:
            nscheck.repair(ns)

        vcheck = ViewCheck(index, report)
        views = await worker.scan(progress, "checking the .views tables", vcheck.rows(),
                                  "views", report)
        if views.skipped:
            report.note(views.skipped)
        elif opts.repair:
            vcheck.repair(views)

        chunks = await worker.scan(progress, "checking the chunk table",
                                   rows["blocks"] + rows["chunks"], "chunks", report)
    bcheck = BackendCheck(store, report, progress, opts, chunks.flows)
    if opts.repair:
        await ccheck.repair(chunks)
    lost = await _unknown_chunks(ccheck, bcheck, chunks.unknown, opts.repair)

    if not opts.incremental:
        await bcheck.list_backends()
    else:
        report.note("incremental run: backends are not listed, so unrecorded objects are "
                    "found by full runs only")
    sl = await bcheck.check_chunks()
    if opts.repair:
        await bcheck.repair_queued()
    lost.update(bcheck.lost)
    if lost:
        await _name_files(store, report, progress, lost)
    return report.result(mode="incremental" if opts.incremental else "full",
                         repair=opts.repair, verify_data=opts.verify,
                         incremental=sl.as_dict() if opts.incremental else None)


async def _unknown_chunks(ccheck: ChunkCheck, bcheck: BackendCheck,
                          unknown: dict[bytes, tuple[int, Finding]],
                          repair: bool) -> dict[bytes, Finding]:
    """Bring back chunks that blocks name but the table lost; return those that are gone."""
    lost: dict[bytes, Finding] = {}
    for digest, (refs, finding) in unknown.items():
        found = None
        if ccheck.in_garbage(digest):
            finding.detail += "; its record is queued as garbage"
        else:
            found = await bcheck.find_copies(digest)
            if found is None:
                finding.detail += "; no backend holds a good copy: the files lost this data"
                lost[digest] = finding
                continue
            finding.detail += f"; good copies on {', '.join(l.backend for l in found.locations)}"
        if repair:
            finding.fixed = ccheck.restore(digest, refs, found)
            finding.detail += "; record restored" if finding.fixed else ""
    return lost


async def _name_files(store: Store, report: Report, progress: Progress,
                      lost: dict[bytes, Finding]) -> None:
    """Fill in the paths of every file (and thumbnail) using a chunk with no good copy."""
    progress.begin("naming files with lost data", unit="files")
    users, thumbs = await trio.to_thread.run_sync(users_of, store, set(lost))
    inos = set().union(*users.values()) if users else set()
    paths = await trio.to_thread.run_sync(paths_of, store.index, inos)
    for digest, finding in lost.items():
        report.lost.append(finding)
        finding.files = sorted(p for ino in users.get(digest, ()) for p in paths[ino])
        if thumbs.get(digest):
            finding.files.append(f"({thumbs[digest]} thumbnails)")
        for path in finding.files:
            progress.note(f"lost data: {path} (chunk {digest.hex()[:16]})")
