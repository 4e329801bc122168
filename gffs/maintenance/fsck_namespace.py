"""fsck of the namespace: inodes, directory entries, readdir cookies, orphans, the tree.

Truth is decided in this order: `inodes` says what exists, `dirents` says
where it is linked (lookups use it), `dircookies` is derived from `dirents`,
and link counts and parent fields are derived from both. An inode nothing
reachable links to (and that is not open-unlinked in `orphans`) is moved
into the flow ``lost+found`` as ``#<ino>``, like e2fsck does.

Repairs re-check each row in their own short write transaction and apply
counts as differences (recorded → counted), so they stay right while the
mounted daemon keeps working: its operations change a count and the rows it
counts together, leaving the difference fsck found unchanged.
"""

from __future__ import annotations

import os
import stat
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import lmdb

from gffs.index import ChunkMap, Index, Namespace, ROOT_INO
from gffs.index.env import N_INODES, NEXT_COOKIE, NEXT_INO
from gffs.index.images import ImageIndex
from gffs.index.views import ViewIndex
from gffs.index.records import InodeRecord, from_u64, u64
from gffs.maintenance.fsck_report import Finding, Report
from gffs.maintenance.fsck_worker import Ticker

LOST_FOUND = b"lost+found"
PER_INODE_TABLES = ("xattrs", "symlinks", "blocks", "contentids")
S_IFDIR = stat.S_IFDIR


@dataclass
class NsScan:
    """What one snapshot of the namespace holds, and what fsck will do about it."""

    inodes: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # ino -> fmt, nlink, parent
    links: Counter = field(default_factory=Counter)      # ino -> entries naming it
    subdirs: Counter = field(default_factory=Counter)    # dir -> entries of directories in it
    holders: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)  # dir -> (parent, name)
    file_holder: dict[int, int] = field(default_factory=dict)  # file with a bad parent -> a holder
    orphans: set[int] = field(default_factory=set)
    reachable: set[int] = field(default_factory=set)
    flows: dict[int, str] = field(default_factory=dict)  # directory -> its flow (top-level name)
    max_cookie: int = 0
    todo: list[tuple[Finding, str, tuple]] = field(default_factory=list)

    def for_repair(self) -> "NsScan":
        """The part repair needs (the findings, and the rows of unreachable inodes), without
        the per-inode tables: what the fsck worker process sends back to the daemon."""
        lost = {args[0] for _f, action, args in self.todo if action == "to_lost_found"}
        return NsScan(inodes={i: self.inodes[i] for i in lost},
                      links=Counter({i: self.links[i] for i in lost if self.links[i]}),
                      holders={i: self.holders[i] for i in lost if i in self.holders},
                      todo=self.todo)

    def file_flow(self, ino: int) -> str | None:
        """The flow whose placement policy a file's chunks follow (its parent's flow)."""
        rec = self.inodes.get(ino)
        return self.flows.get(rec[2]) if rec is not None else None


def _name(name: bytes) -> str:
    return name.decode(errors="backslashreplace")


def _inos_with_rows(txn: lmdb.Transaction, db: Any) -> list[int]:
    """Distinct inode prefixes of a table keyed by ino (+ more): one seek per inode."""
    out = []
    cur = txn.cursor(db=db)
    ok = cur.first()
    while ok:
        ino = from_u64(cur.key()[:8])
        out.append(ino)
        if ino == 2 ** 64 - 1:
            break
        ok = cur.set_range(u64(ino + 1))
    return out


def children(txn: lmdb.Transaction, index: Index, parent: int) -> list[tuple[bytes, int]]:
    """(name, child) of every entry of *parent*, from `dirents` (the table lookups use)."""
    prefix = u64(parent)
    cur = txn.cursor(db=index.db["dirents"])
    out = []
    if cur.set_range(prefix):
        for key, value in cur:
            if key[:8] != prefix:
                break
            out.append((bytes(key[8:]), from_u64(value[:8])))
    return out


class NamespaceCheck:
    def __init__(self, index: Index, report: Report) -> None:
        self.index = index
        self.report = report
        self.ns = Namespace(index)
        self.db = index.db

    # checking (worker thread, one read transaction) -----------------------------------
    def scan(self, tick: Ticker) -> NsScan:
        with self.index.read() as txn:
            s = NsScan()
            self._scan_inodes(txn, s, tick)
            self._scan_dirents(txn, s, tick)
            self._scan_cookies(txn, s, tick)
            self._scan_orphans(txn, s)
            self._scan_per_inode_rows(txn, s)
            self._walk_tree(txn, s, tick)
            self._check_dirs(s)
            self._check_links(s)
            self._check_sequences(txn, s)
        return s

    def _add(self, s: NsScan, kind: str, obj: str, detail: str, action: str, *args: Any) -> None:
        s.todo.append((self.report.add(kind, obj, detail), action, args))

    def _scan_inodes(self, txn, s: NsScan, tick: Ticker) -> None:
        for key, value in txn.cursor(db=self.db["inodes"]):
            rec = InodeRecord.unpack(value)
            s.inodes[from_u64(key)] = (stat.S_IFMT(rec.mode), rec.nlink, rec.parent)
            tick()
        self.report.count("inodes", len(s.inodes))
        if ROOT_INO not in s.inodes:
            self._add(s, "root_missing", f"inode {ROOT_INO}", "recreated empty; the flows' "
                      "entries still point at their directories", "make_root")

    def _scan_dirents(self, txn, s: NsScan, tick: Ticker) -> None:
        cookies = self.db["dircookies"]
        n = 0
        for key, value in txn.cursor(db=self.db["dirents"]):
            n += 1
            tick()
            parent, name = from_u64(key[:8]), bytes(key[8:])
            child, cookie = from_u64(value[:8]), from_u64(value[8:16])
            s.max_cookie = max(s.max_cookie, cookie)
            where = f"entry {parent}/{_name(name)}"
            if parent != ROOT_INO and s.inodes.get(parent, (0,))[0] != S_IFDIR:
                self._add(s, "dirent_in_missing_dir", where, f"directory {parent} does not exist; "
                          f"entry dropped (inode {child} goes to lost+found if unreachable)",
                          "drop_dirent", parent, name, child)
                continue
            if child not in s.inodes:
                self._add(s, "dangling_dirent", where, f"inode {child} does not exist; entry dropped",
                          "drop_dirent", parent, name, child)
                continue
            if txn.get(key[:8] + value[8:16], db=cookies) != value[:8] + name:
                self._add(s, "dircookie_missing", where, "readdir row re-created",
                          "add_cookie", parent, name)
            s.links[child] += 1
            fmt, _nlink, cparent = s.inodes[child]
            if fmt == S_IFDIR:
                s.subdirs[parent] += 1
                s.holders.setdefault(child, []).append((parent, name))
            elif s.inodes.get(cparent, (0,))[0] != S_IFDIR:
                s.file_holder.setdefault(child, parent)
        self.report.count("entries", n)

    def _scan_cookies(self, txn, s: NsScan, tick: Ticker) -> None:
        dirents = self.db["dirents"]
        for key, value in txn.cursor(db=self.db["dircookies"]):
            tick()
            parent, cookie = from_u64(key[:8]), from_u64(key[8:16])
            name = bytes(value[8:])
            s.max_cookie = max(s.max_cookie, cookie)
            if txn.get(u64(parent) + name, db=dirents) != bytes(value[:8]) + u64(cookie):
                self._add(s, "dircookie_stale", f"cookie {parent}/{cookie}",
                          f"names {_name(name)!r}, which has no such entry; row dropped",
                          "drop_cookie", bytes(key), bytes(value))

    def _scan_orphans(self, txn, s: NsScan) -> None:
        for ino in self.ns.orphans(txn):
            if ino not in s.inodes:
                self._add(s, "orphan_stale", f"inode {ino}", "inode is gone; row dropped",
                          "drop_orphan", ino)
            elif s.links[ino]:
                self._add(s, "orphan_stale", f"inode {ino}", "inode is still linked (the next "
                          "mount would have deleted it); row dropped", "drop_orphan", ino)
            else:
                s.orphans.add(ino)
        self.report.count("open-unlinked inodes", len(s.orphans))

    def _scan_per_inode_rows(self, txn, s: NsScan) -> None:
        missing: dict[int, list[str]] = {}
        for table in PER_INODE_TABLES:
            for ino in _inos_with_rows(txn, self.db[table]):
                if ino not in s.inodes:
                    missing.setdefault(ino, []).append(table)
        for ino, tables in sorted(missing.items()):
            self._add(s, "rows_of_missing_inode", f"inode {ino}",
                      f"rows in {', '.join(tables)} dropped", "drop_inode_rows", ino)
        symlinks = self.db["symlinks"]
        for ino, (fmt, _n, _p) in s.inodes.items():
            if fmt == stat.S_IFLNK and txn.get(u64(ino), db=symlinks) is None:
                s.todo.append((self.report.add("symlink_target_missing", f"inode {ino}",
                                               "cannot be repaired: delete the link"), "", ()))

    def _walk_tree(self, txn, s: NsScan, tick: Ticker) -> None:
        """Everything reachable from the root through `dirents`, and each directory's flow."""
        s.reachable.add(ROOT_INO)
        stack = [ROOT_INO]
        while stack:
            d = stack.pop()
            for name, child in children(txn, self.index, d):
                tick()
                if child in s.reachable or child not in s.inodes:
                    continue
                s.reachable.add(child)
                if s.inodes[child][0] == S_IFDIR:
                    s.flows[child] = (name.decode(errors="surrogateescape") if d == ROOT_INO
                                      else s.flows.get(d, ""))
                    stack.append(child)

    def _check_dirs(self, s: NsScan) -> None:
        for d, held in s.holders.items():
            keep = next((h for h in held if h[0] == s.inodes[d][2]), held[0])
            for parent, name in held:
                if (parent, name) != keep:
                    self._add(s, "dir_multiple_links", f"entry {parent}/{_name(name)}",
                              f"directory {d} is also in {keep[0]}; this entry dropped",
                              "drop_dir_link", parent, name, d)
            if d != ROOT_INO and s.inodes[d][2] != keep[0]:
                self._add(s, "dir_parent_wrong", f"inode {d}", f"parent {s.inodes[d][2]}, held "
                          f"by {keep[0]}; set to {keep[0]}", "set_parent", d, s.inodes[d][2], keep[0])
        root = s.inodes.get(ROOT_INO)
        if root is not None and root[2] != ROOT_INO:
            self._add(s, "dir_parent_wrong", f"inode {ROOT_INO}", f"root's parent is {root[2]}; "
                      f"set to {ROOT_INO}", "set_parent", ROOT_INO, root[2], ROOT_INO)
        for ino, holder in s.file_holder.items():
            old = s.inodes[ino][2]
            self._add(s, "file_parent_missing", f"inode {ino}", f"parent {old} is no directory "
                      f"(opening it for writing fails); set to {holder}", "set_parent",
                      ino, old, holder)

    def _check_links(self, s: NsScan) -> None:
        lost = []
        for ino, (fmt, nlink, _parent) in s.inodes.items():
            orphan = ino in s.orphans
            if orphan:
                want = 0
            elif fmt == S_IFDIR:
                want = 2 + s.subdirs[ino]
            else:
                want = s.links[ino]
            if nlink != want:
                self._add(s, "nlink_wrong", f"inode {ino}", f"nlink {nlink}, counted {want}",
                          "add_nlink", ino, want - nlink)
            if ino not in s.reachable and not orphan:
                lost.append(ino)
        for ino in lost:
            self._add(s, "unreachable_inode", f"inode {ino}",
                      f"moved to /{LOST_FOUND.decode()}/#{ino}", "to_lost_found", ino)

    def _check_sequences(self, txn, s: NsScan) -> None:
        max_ino = max(s.inodes, default=ROOT_INO)
        for key, highest in ((NEXT_INO, max_ino), (NEXT_COOKIE, s.max_cookie)):
            value = self.index.counter(txn, key)
            if value <= highest:
                self._add(s, "sequence_behind", f"meta {key.decode()}",
                          f"{value}, but {highest} is in use; set to {highest + 1}",
                          "raise_sequence", key, highest + 1)
        recorded = self.index.counter(txn, N_INODES)
        if recorded != len(s.inodes):
            self._add(s, "counter_wrong", f"meta {N_INODES.decode()}",
                      f"{recorded}, counted {len(s.inodes)}", "add_counter", N_INODES,
                      len(s.inodes) - recorded)

    # repairing (trio thread, one short write transaction per fix) ---------------------
    ORDER = ("make_root", "drop_cookie", "add_cookie", "drop_dirent", "drop_orphan",
             "drop_inode_rows", "drop_dir_link", "set_parent", "add_nlink", "to_lost_found",
             "raise_sequence", "add_counter")

    def repair(self, s: NsScan) -> None:
        """Apply every fix in dependency order; a fix whose rows changed meanwhile is skipped."""
        by_action: dict[str, list[tuple[Finding, tuple]]] = {}
        for finding, action, args in s.todo:
            if action:
                by_action.setdefault(action, []).append((finding, args))
        lost = [args[0] for _f, args in by_action.get("to_lost_found", [])]
        for action in self.ORDER:
            if action == "to_lost_found":
                if lost:
                    done = self._to_lost_found(lost, s)
                    for finding, args in by_action[action]:
                        finding.fixed = args[0] in done
                continue
            for finding, args in by_action.get(action, []):
                with self.index.write() as txn:
                    finding.fixed = bool(getattr(self, "_" + action)(txn, *args))

    def _make_root(self, txn) -> bool:
        if self.ns.exists(txn, ROOT_INO):
            return True
        now = time.time_ns()
        rec = InodeRecord(S_IFDIR | 0o755, os.getuid(), os.getgid(), 2, 0, now, now, now, 0,
                          ROOT_INO)
        self.ns.put(txn, ROOT_INO, rec)
        self.index.add_counter(txn, N_INODES, 1)
        return True

    def _drop_cookie(self, txn, key: bytes, value: bytes) -> bool:
        if txn.get(key, db=self.db["dircookies"]) != value:
            return True  # gone meanwhile
        parent, name = key[:8], value[8:]
        if txn.get(parent + name, db=self.db["dirents"]) == value[:8] + key[8:16]:
            return True  # matches an entry now
        return txn.delete(key, db=self.db["dircookies"])

    def _add_cookie(self, txn, parent: int, name: bytes) -> bool:
        key = u64(parent) + name
        raw = txn.get(key, db=self.db["dirents"])
        if raw is None:
            return True
        want = bytes(raw[:8]) + name
        held = txn.get(u64(parent) + raw[8:16], db=self.db["dircookies"])
        if held == want:
            return True
        if held is None:
            txn.put(u64(parent) + raw[8:16], want, db=self.db["dircookies"])
        else:  # the cookie belongs to another entry: give this one a fresh cookie
            cookie = u64(self.index.take_next(txn, NEXT_COOKIE))
            txn.put(key, bytes(raw[:8]) + cookie, db=self.db["dirents"])
            txn.put(u64(parent) + cookie, want, db=self.db["dircookies"])
        return True

    def _drop_dirent(self, txn, parent: int, name: bytes, child: int) -> bool:
        if self.ns.lookup(txn, parent, name) != child:
            return True
        if self.ns.exists(txn, child) and (parent == ROOT_INO or (
                self.ns.exists(txn, parent) and stat.S_ISDIR(self.ns.get(txn, parent).mode))):
            return False  # both exist again: not ours to drop
        self.ns.remove_entry(txn, parent, name)
        return True

    def _drop_orphan(self, txn, ino: int) -> bool:
        txn.delete(u64(ino), db=self.db["orphans"])
        return True

    def _drop_inode_rows(self, txn, ino: int) -> bool:
        if self.ns.exists(txn, ino):
            return False
        ChunkMap(self.index).drop_blocks(txn, ino)
        images = ImageIndex(self.index)
        ViewIndex(self.index).content_set(txn, ino, images.content_id(txn, ino), None)
        images.drop_inode(txn, ino)
        self.ns.delete_inode(txn, ino)
        return True

    def _drop_dir_link(self, txn, parent: int, name: bytes, d: int) -> bool:
        if self.ns.lookup(txn, parent, name) != d:
            return True
        self.ns.remove_entry(txn, parent, name)
        prec = self.ns.get(txn, parent)
        prec.nlink = max(prec.nlink - 1, 0)
        self.ns.put(txn, parent, prec)
        return True

    def _set_parent(self, txn, ino: int, old: int, new: int) -> bool:
        if not self.ns.exists(txn, ino):
            return False
        rec = self.ns.get(txn, ino)
        if rec.parent == old:
            rec.parent = new
            self.ns.put(txn, ino, rec)
        return True

    def _add_nlink(self, txn, ino: int, delta: int) -> bool:
        if not self.ns.exists(txn, ino):
            return False
        rec = self.ns.get(txn, ino)
        rec.nlink = max(rec.nlink + delta, 0)
        self.ns.put(txn, ino, rec)
        return True

    def _raise_sequence(self, txn, key: bytes, value: int) -> bool:
        if self.index.counter(txn, key) < value:
            txn.put(key, u64(value), db=self.db["meta"])
        return True

    def _add_counter(self, txn, key: bytes, delta: int) -> bool:
        self.index.add_counter(txn, key, delta)
        return True

    def _lost_found(self, txn) -> int:
        ino = self.ns.lookup(txn, ROOT_INO, LOST_FOUND)
        if ino is not None:
            return ino
        now = time.time_ns()
        rec = InodeRecord(S_IFDIR | 0o700, os.getuid(), os.getgid(), 2, 0, now, now, now, 0,
                          ROOT_INO)
        ino = self.ns.new_inode(txn, rec)
        self.ns.add_entry(txn, ROOT_INO, LOST_FOUND, ino)
        root = self.ns.get(txn, ROOT_INO)
        root.nlink += 1
        self.ns.put(txn, ROOT_INO, root)
        return ino

    def _to_lost_found(self, lost: list[int], s: NsScan) -> set[int]:
        """Link the tops of unreachable subtrees into lost+found; their contents follow.

        An inode that only unreachable directories hold comes back with its
        directory; a cycle of directories holding each other is cut at its
        lowest inode number.
        """
        lost_set = set(lost)
        done: set[int] = set()
        with self.index.write() as txn:
            lf = self._lost_found(txn)
            tops = [i for i in lost if not s.links[i]]
            while True:
                for ino in tops:
                    if ino not in done and self._link_lost(txn, lf, ino):
                        done |= self._subtree(txn, ino) & lost_set
                left = [i for i in lost if i not in done and self.ns.exists(txn, i)
                        and s.inodes[i][0] == S_IFDIR]
                if not left:
                    break
                cut = min(left)  # a cycle: take it out of the directory that holds it
                for parent, name in s.holders.get(cut, []):
                    self._drop_dir_link(txn, parent, name, cut)
                tops = [cut]
        return done

    def _link_lost(self, txn, lf: int, ino: int) -> bool:
        if not self.ns.exists(txn, ino):
            return False
        name = f"#{ino}".encode()
        if self.ns.lookup(txn, lf, name) is None:
            self.ns.add_entry(txn, lf, name, ino)
            rec = self.ns.get(txn, ino)
            rec.parent = lf
            if stat.S_ISDIR(rec.mode):
                lrec = self.ns.get(txn, lf)
                lrec.nlink += 1
                self.ns.put(txn, lf, lrec)
            else:
                rec.nlink += 1
            self.ns.put(txn, ino, rec)
        return True

    def _subtree(self, txn, top: int) -> set[int]:
        seen, stack = {top}, [top]
        while stack:
            for _name, child in children(txn, self.index, stack.pop()):
                if child not in seen and self.ns.exists(txn, child):
                    seen.add(child)
                    if stat.S_ISDIR(self.ns.get(txn, child).mode):
                        stack.append(child)
        return seen


def paths_of(index: Index, inos: set[int], limit: int = 20) -> dict[int, list[str]]:
    """Paths (flow/…/name) of each inode, at most *limit* each; blocking (worker thread).

    One scan of `dirents` finds the entries naming the inodes; directories are
    named by walking their parent fields.
    """
    ns = Namespace(index)
    out: dict[int, list[str]] = {ino: [] for ino in inos}
    with index.read() as txn:
        dir_names: dict[int, str] = {ROOT_INO: ""}

        def dir_path(d: int, depth: int = 0) -> str:
            if d in dir_names:
                return dir_names[d]
            if depth > 4096 or not ns.exists(txn, d):
                return f"?{d}"
            parent = ns.get(txn, d).parent
            name = next((n for n, c in children(txn, index, parent) if c == d), None)
            path = (f"{dir_path(parent, depth + 1)}/{_name(name)}" if name is not None
                    else f"(unreachable directory {d})")
            dir_names[d] = path
            return path

        for key, value in txn.cursor(db=index.db["dirents"]):
            ino = from_u64(value[:8])
            if ino in out and len(out[ino]) < limit:
                out[ino].append(f"{dir_path(from_u64(key[:8]))}/{_name(bytes(key[8:]))}".lstrip("/"))
    for ino, paths in out.items():
        if not paths:
            paths.append(f"(inode {ino}, open but unlinked)")
    return out

