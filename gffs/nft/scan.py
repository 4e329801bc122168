"""`gffs-admin nft scan`: link every token an owner holds whose media is already stored.

For each token the owner holds now, the metadata names a media URI; its bytes
are fetched (under the media size limit) and their content id computed the
way the store computes it for a file (gffs.index.images). Files with that
content id are found in the index, opened read-only beside the running daemon,
and linked through the mount. With an import flow, media the store lacks is
written into that flow through the mount first. One bad token is reported and
skipped; it never stops the scan.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from gffs.config import Config
from gffs.index import Index, Namespace, ROOT_INO
from gffs.index.images import content_id_of_bytes
from gffs.index.records import from_u64
from gffs.mounts import gffs_data_dir, mounts
from gffs.nft.ethereum import EvmClient
from gffs.nft.fetch import Fetcher, NftError
from gffs.nft.link import Linked, TokenRef, read_nft, resolve, write_nft
from gffs.nft.tezos import TezosClient
from gffs.nft.validate import EVM_CHAINS

_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"),
          (b"<svg", ".svg"), (b"<?xml", ".svg"), (b"%PDF", ".pdf"))


@dataclass
class ScanResult:
    token: str
    status: str                       # linked | imported | missing | skipped | failed
    paths: list[str] = field(default_factory=list)
    message: str = ""
    notes: list[str] = field(default_factory=list)


log = logging.getLogger(__name__)


def store_mount(cfg: Config) -> str:
    """Where the store of *cfg* is mounted (scan reads and writes through the mount)."""
    want = os.path.realpath(cfg.data_dir)
    for m in reversed(mounts()):
        d = gffs_data_dir(m)
        if d is not None and os.path.realpath(d) == want:
            return m.mountpoint
    raise NftError(f"the store {cfg.data_dir} is not mounted: mount it first "
                   "(scan links files through the mount)")


class StoreFiles:
    """Files of the store by content id, from the index opened read-only."""

    def __init__(self, cfg: Config, mountpoint: str,
                 commit_mounted: Callable[[Path], str | None]) -> None:
        self.mountpoint = mountpoint
        problem = commit_mounted(cfg.data_dir)   # files closed just now are in the open group
        if problem:
            log.warning("reading the index as last committed: %s", problem)
        index = Index(cfg.index_dir, readonly=True)
        try:
            self.block_size = index.block_size
            self.by_cid: dict[bytes, list[int]] = {}
            with index.read() as txn:
                for key, value in txn.cursor(db=index.db["contentids"]):
                    self.by_cid.setdefault(bytes(value), []).append(from_u64(key))
                wanted = {ino for inos in self.by_cid.values() for ino in inos}
                self.path_of = dict(_walk(Namespace(index), txn, wanted))
        finally:
            index.close()

    def paths(self, data: bytes) -> list[str]:
        """Files holding exactly *data* (both ways the store may have kept zero blocks)."""
        cids = {content_id_of_bytes(data, self.block_size, stored) for stored in (False, True)}
        inos = [i for cid in cids for i in self.by_cid.get(cid, [])]
        return [os.path.join(self.mountpoint, self.path_of[i]) for i in inos if i in self.path_of]


def _walk(ns: Namespace, txn, wanted: set[int]) -> Iterator[tuple[int, str]]:
    """(ino, one path relative to the mount) of every wanted regular file."""
    stack = [(ROOT_INO, "")]
    while stack and wanted:
        parent, prefix = stack.pop()
        for _cookie, name, ino in ns.entries(txn, parent):
            rel = prefix + name.decode("utf-8", "surrogateescape")
            mode = ns.get(txn, ino).mode
            if stat.S_ISDIR(mode):
                stack.append((ino, rel + "/"))
            elif ino in wanted and stat.S_ISREG(mode):
                wanted.discard(ino)
                yield ino, rel


def owned_tokens(cfg: Config, fetcher: Fetcher, chain: str, owner: str,
                 contracts: list[str]) -> Iterator[TokenRef]:
    client = EvmClient(chain, cfg.nft) if chain in EVM_CHAINS else \
        TezosClient(chain, cfg.nft, fetcher)
    for contract, token_id, standard in client.owned(owner, contracts):
        yield TokenRef(chain, contract, token_id, standard, owner)


def _extension(data: bytes) -> str:
    if data[8:12] == b"WEBP" and data[:4] == b"RIFF":
        return ".webp"
    if data[4:8] == b"ftyp":
        return ".mp4"
    return next((ext for magic, ext in _MAGIC if data.lstrip()[:len(magic)] == magic), ".bin")


def _import(data: bytes, ref: TokenRef, mountpoint: str, flow: str) -> str:
    folder = Path(mountpoint) / flow
    folder.mkdir(exist_ok=True)
    dest = folder / f"{ref.chain}-{ref.contract}-{ref.token_id}{_extension(data)}"
    try:
        with open(dest, "xb") as f:
            f.write(data)
    except FileExistsError:
        raise NftError(f"{dest} exists with other content; not overwritten") from None
    except OSError as exc:
        raise NftError(f"cannot import into {dest}: {exc.strerror}") from None
    return str(dest)


def _link_one(path: str, linked: Linked) -> str | None:
    """Link *path*; a reason string when it already carries another token."""
    nft = read_nft(path)
    mine = (nft.get("chain"), nft.get("contract", "").lower(), nft.get("token_id"))
    if nft.get("chain") and mine != (linked.ref.chain, linked.ref.contract.lower(),
                                     str(linked.ref.token_id)):
        return f"{path} is linked to {':'.join(str(x) for x in mine)}"
    try:
        write_nft(path, linked.values)
    except NftError as exc:
        raise NftError(f"{path}: {exc}") from None
    return None


def scan(cfg: Config, fetcher: Fetcher, chain: str, owner: str, contracts: list[str],
         import_to: str | None, report: Callable[[ScanResult], None],
         commit_mounted: Callable[[Path], str | None]) -> list[ScanResult]:
    """*commit_mounted(data_dir)*: ask the mount's daemon to commit its open group first
    (gffs.maintenance.control.commit_mounted; passed in, nft is a library below it)."""
    if import_to is not None and (not import_to or "/" in import_to
                                  or import_to.startswith(".")):
        raise NftError(f"--import-to {import_to!r}: name one flow (a top-level folder)")
    mountpoint = store_mount(cfg)
    files = StoreFiles(cfg, mountpoint, commit_mounted)
    results = []
    for ref in owned_tokens(cfg, fetcher, chain, owner, contracts):
        result = ScanResult(str(ref), "failed")
        try:
            linked = resolve(ref, cfg, fetcher)
            result.notes = linked.notes
            if not linked.media_uri:
                raise NftError("its metadata names no media")
            data = fetcher.fetch(linked.media_uri, cfg.nft.max_media_mb * 1024 * 1024, "media")
            paths = files.paths(data)
            if not paths and import_to is not None:
                paths = [_import(data, ref, mountpoint, import_to)]
                result.status = "imported"
            elif not paths:
                result.status, result.message = "missing", "its media is not in the store"
            else:
                result.status = "linked"
            for path in paths:
                reason = _link_one(path, linked)
                if reason:
                    result.notes.append(reason + "; left as it is")
                else:
                    result.paths.append(path)
            if paths and not result.paths:
                result.status = "skipped"
        except NftError as exc:
            result.status, result.message = "failed", str(exc)
        results.append(result)
        report(result)
    return results
