"""What fsck found: typed findings, counts per kind, the lost-data list, the exit code.

Every check adds a :class:`Finding` (kind, object, detail); a repair that
worked sets ``fixed``. The result is a JSON-able dict (``gffs-admin fsck
--json``) and a short text summary. Exit code: 0 when nothing is left to fix,
1 when problems remain (found without --repair, or not repairable), as fsck(8)
tools do for "errors left uncorrected".
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from gffs.maintenance.jobs import EXIT_FAILED, EXIT_OK

# kind -> what it means. Kinds in INFO_KINDS are reported but are not problems.
KINDS: dict[str, str] = {
    # index against itself: namespace
    "root_missing": "the root directory's inode is missing",
    "dangling_dirent": "a directory entry names an inode that does not exist",
    "dirent_in_missing_dir": "a directory entry belongs to a directory that does not exist",
    "dircookie_missing": "a directory entry has no readdir-cookie row",
    "dircookie_stale": "a readdir-cookie row has no matching directory entry",
    "orphan_stale": "the orphans table names an inode that is gone or still linked",
    "rows_of_missing_inode": "xattrs, symlink, blocks or content id of an inode that does not exist",
    "symlink_target_missing": "a symlink inode has no target",
    "dir_multiple_links": "a directory is entered in more than one directory",
    "dir_parent_wrong": "a directory's parent field differs from the directory that holds it",
    "file_parent_missing": "a file's parent field (its placement flow) names no directory",
    "nlink_wrong": "an inode's link count differs from its directory entries",
    "unreachable_inode": "an inode is not reachable from the root and not open-unlinked",
    "sequence_behind": "a sequence (next inode, next cookie) would hand out a used number",
    "counter_wrong": "a counter in meta differs from the recomputed value",
    # index against itself: chunks
    "refcount_wrong": "a chunk's refcount differs from the blocks and thumbnails using it",
    "unknown_chunk": "a block or thumbnail names a chunk the chunk table does not know",
    "garbage_also_live": "a chunk is both live and queued for deletion",
    "location_unknown_backend": "a chunk copy is recorded on a backend the config does not name",
    "interrupted_move": "a rebalance step older than an hour never finished",
    # index against itself: the .views tables
    "view_rows_wrong": "an inode's .views rows differ from what its facts and attributes make",
    "view_row_orphan": "a .views row has no inoviews twin (no change would ever remove it)",
    "content_inode_wrong": "cidinodes and contentids disagree (facts would miss a file)",
    # against the backends
    "backend_unreachable": "a backend could not be checked",
    "copy_missing": "a recorded copy is not on its backend",
    "copy_corrupt": "a recorded copy does not decode to its hash (--verify-data)",
    "copy_unrecorded": "a backend holds a copy of a live chunk that the index does not record",
    "object_unrecorded": "a backend object older than the age limit is no chunk of the index",
    "under_replicated": "a chunk has fewer trusted copies than its policy asks for",
    "repair_pending": "a chunk is below its copy count and already queued for repair",
    "chunk_lost": "no good copy of a chunk is left: the files using it lost data",
}
INFO_KINDS = {"repair_pending"}
FINDINGS_SHOWN = 1000  # per kind in the JSON result; counts always cover all


@dataclass(slots=True)
class Finding:
    kind: str
    object: str
    detail: str = ""
    fixed: bool = False
    files: list[str] = field(default_factory=list)  # paths of files whose data this affects


class Report:
    """Collects findings and counters of one fsck run."""

    def __init__(self, note: Callable[[str], None] | None = None) -> None:
        self.findings: list[Finding] = []
        self.checked: dict[str, int] = {}
        self.notes: list[str] = []
        self.lost: list[Finding] = []  # chunks without a good copy (files lost data)
        self._note = note
        self.started = time.monotonic()

    def add(self, kind: str, obj: str, detail: str = "") -> Finding:
        assert kind in KINDS, kind
        finding = Finding(kind, obj, detail)
        self.findings.append(finding)
        return finding

    def count(self, what: str, n: int = 1) -> None:
        self.checked[what] = self.checked.get(what, 0) + n

    def note(self, message: str) -> None:
        self.notes.append(message)
        if self._note is not None:
            self._note(message)

    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.kind not in INFO_KINDS]

    def summary(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for f in self.findings:
            row = out.setdefault(f.kind, {"found": 0, "fixed": 0})
            row["found"] += 1
            row["fixed"] += f.fixed
        return dict(sorted(out.items()))

    def result(self, **extra: Any) -> dict[str, Any]:
        problems = self.problems()
        unfixed = [f for f in problems if not f.fixed]
        shown: dict[str, int] = {}
        findings = []
        for f in self.findings:
            shown[f.kind] = shown.get(f.kind, 0) + 1
            if shown[f.kind] <= FINDINGS_SHOWN:
                findings.append(asdict(f))
        lost = [{"chunk": f.object.split()[-1], "files": f.files} for f in self.lost]
        return {
            "exit_code": EXIT_FAILED if unfixed else EXIT_OK,
            "clean": not problems,
            "problems": len(problems),
            "fixed": len(problems) - len(unfixed),
            "unfixed": len(unfixed),
            "summary": self.summary(),
            "checked": dict(self.checked),
            "findings": findings,
            "lost": lost,
            "notes": list(self.notes),
            "elapsed": round(time.monotonic() - self.started, 3),
            **extra,
        }


def render(result: dict[str, Any], write: Callable[[str], None] = print) -> None:
    """The human summary of a result (what `gffs-admin fsck` prints without --json)."""
    checked = ", ".join(f"{n} {what}" for what, n in result["checked"].items())
    write(f"fsck ({result.get('mode', 'full')}{', repair' if result.get('repair') else ''}"
          f"{', verify-data' if result.get('verify_data') else ''}): checked {checked}")
    inc = result.get("incremental")
    if inc:
        write(f"  incremental slice: {inc['chunks']} chunks from {inc['from']} to {inc['to']}"
              f"{' (wrapped to the start)' if inc['wrapped'] else ''}")
    if result["summary"]:
        write(f"  {'kind':<26} {'found':>7} {'fixed':>7}")
        for kind, row in result["summary"].items():
            write(f"  {kind:<26} {row['found']:>7} {row['fixed']:>7}")
    for f in result["findings"][:50]:
        mark = "fixed" if f["fixed"] else ("info" if f["kind"] in INFO_KINDS else "NOT FIXED")
        write(f"  [{mark}] {f['kind']}: {f['object']}{' — ' + f['detail'] if f['detail'] else ''}")
    if len(result["findings"]) > 50:
        write(f"  ... {len(result['findings']) - 50} more (--json lists them)")
    for lost in result["lost"]:
        files = ", ".join(lost["files"]) or "no file uses it"
        write(f"  lost data: chunk {lost['chunk']} — {files}")
    for note in result["notes"]:
        write(f"  note: {note}")
    if result["clean"]:
        write("clean")
    elif result["unfixed"]:
        write(f"{result['problems']} problems, {result['fixed']} fixed, {result['unfixed']} "
              "NOT fixed" + ("" if result.get("repair") else " (run with --repair)"))
    else:
        write(f"{result['problems']} problems, all fixed")
