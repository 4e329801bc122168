"""Linking a file to its token: ask the chain, read the metadata, set user.nft.* on the mount.

Everything is fetched and checked before the first attribute is touched, so a
token whose metadata is hostile or unreachable leaves the file as it was. The
values are then set with os.setxattr through the mount, where the filesystem
validates each one again (docs/NFT.md).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Iterator

from gffs.config import Config
from gffs.mounts import mounts
from gffs.nft.ethereum import ChainToken, EvmClient
from gffs.nft.fetch import Fetcher, NftError
from gffs.nft.metadata import EVM_MEDIA_FIELDS, TZIP21_MEDIA_FIELDS, checked_uri, values_from_metadata
from gffs.nft.tezos import TezosClient
from gffs.nft.validate import EVM_CHAINS, PREFIX, InvalidNftValue, validate

# Order matters: chain first, so contract and owner are checked against it.
KEYS = ("chain", "contract", "token_id", "standard", "owner", "token_uri", "media_uri",
        "name", "description", "attributes")


@dataclass(frozen=True)
class TokenRef:
    chain: str
    contract: str
    token_id: int
    standard: str | None = None
    owner: str | None = None          # a holder to prefer (ERC-1155/FA2 have several)

    def __str__(self) -> str:
        return f"{self.chain}:{self.contract}:{self.token_id}"


@dataclass
class Linked:
    """The values a token gives a file, and what was left out or noticed on the way."""

    ref: TokenRef
    values: dict[str, str]
    notes: list[str] = field(default_factory=list)
    media_uri: str | None = None      # also when too long to keep as an attribute


def token_ref(chain: str, contract: str, token_id: str | int, standard: str | None = None,
              owner: str | None = None) -> TokenRef:
    """A TokenRef from user input, checked by the same rules as the attributes."""
    given = {"chain": chain, "contract": contract, "token_id": str(token_id)}
    if standard:
        given["standard"] = standard
    if owner:
        given["owner"] = owner
    check_values(given, "")
    return TokenRef(chain, contract, int(token_id), standard, owner)


def check_values(values: dict[str, str], source: str = "the chain returned an unusable ") -> None:
    current: dict[str, str] = {}
    for key in KEYS:
        if key in values:
            try:
                validate(key, values[key].encode(), current)
            except InvalidNftValue as exc:
                raise NftError(f"{source}{exc}") from None
            current[key] = values[key]


def chain_token(ref: TokenRef, cfg: Config, fetcher: Fetcher) -> ChainToken:
    if ref.chain in EVM_CHAINS:
        return EvmClient(ref.chain, cfg.nft).token(ref.contract, ref.token_id, ref.standard,
                                                   ref.owner)
    return TezosClient(ref.chain, cfg.nft, fetcher).token(ref.contract, ref.token_id,
                                                          ref.standard, ref.owner)


def resolve(ref: TokenRef, cfg: Config, fetcher: Fetcher) -> Linked:
    """Everything the chain and the token metadata say, checked, nothing written."""
    tok = chain_token(ref, cfg, fetcher)
    out = Linked(ref, {"chain": ref.chain, "contract": ref.contract,
                       "token_id": str(ref.token_id), "standard": tok.standard},
                 list(tok.notes))
    if tok.owner:
        out.values["owner"] = tok.owner
    meta = dict(tok.metadata or {})
    if tok.token_uri:
        fetched = fetcher.fetch_json(tok.token_uri, cfg.nft.max_metadata_kb * 1024,
                                     "token metadata")
        meta = {**fetched, **meta}
        uri = checked_uri(tok.token_uri, "token URI", out.notes)
        if uri:
            out.values["token_uri"] = uri
    fields = EVM_MEDIA_FIELDS if ref.chain in EVM_CHAINS else TZIP21_MEDIA_FIELDS
    out.values.update(values_from_metadata(meta, fields, out.notes))
    out.media_uri = out.values.get("media_uri") or next(
        (meta[f] for f in fields if isinstance(meta.get(f), str) and meta[f].startswith("data:")),
        None)
    check_values(out.values)
    return out


# the file side ---------------------------------------------------------------------------

def gffs_file(path: str) -> str:
    """The real path of *path* if it is a regular file on a gffs mount; NftError otherwise
    (the caller names the path)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise NftError(str(exc.strerror)) from None
    on = [m for m in mounts() if real == m.mountpoint or real.startswith(m.mountpoint.rstrip("/") + "/")]
    top = max(on, key=lambda m: len(m.mountpoint), default=None)
    if top is None or not top.fstype.endswith("gffs"):
        raise NftError("not on a gffs mount")
    if not stat.S_ISREG(st.st_mode):
        raise NftError("not a regular file")
    return real


def read_nft(path: str) -> dict[str, str]:
    """The user.nft.* attributes of *path*, without the prefix."""
    out = {}
    for name in os.listxattr(path):
        if name.startswith(PREFIX):
            out[name[len(PREFIX):]] = os.getxattr(path, name).decode("utf-8", "replace")
    return out


def write_nft(path: str, values: dict[str, str]) -> None:
    """Make the user.nft.* attributes of *path* exactly *values* (already checked)."""
    current = read_nft(path)
    doomed = [k for k in current if k not in values]
    if current.get("chain") not in (None, values.get("chain")):
        doomed += [k for k in ("contract", "owner") if k in current and k not in doomed]
    key = ""
    try:
        for key in doomed:
            os.removexattr(path, PREFIX + key)
        for key in KEYS:
            if key in values and (current.get(key) != values[key] or key in doomed):
                os.setxattr(path, PREFIX + key, values[key].encode())
    except OSError as exc:
        raise NftError(f"the filesystem refused user.nft.{key}: {exc.strerror}") from None


def link_file(path: str, ref: TokenRef, cfg: Config, fetcher: Fetcher) -> Linked:
    real = gffs_file(path)
    linked = resolve(ref, cfg, fetcher)
    write_nft(real, linked.values)
    return linked


def stored_ref(path: str) -> TokenRef | None:
    """The token a file is linked to, from its attributes (None: not linked)."""
    nft = read_nft(path)
    if not all(k in nft for k in ("chain", "contract", "token_id")):
        return None
    return token_ref(nft["chain"], nft["contract"], nft["token_id"], nft.get("standard"),
                     nft.get("owner"))


def linked_files(path: str) -> Iterator[str]:
    """*path* itself, or every regular file below the directory *path*."""
    if not os.path.isdir(path):
        yield path
        return
    for top, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            yield os.path.join(top, name)
