"""Configuration: optional TOML file, sane defaults, one-line errors.

With no file at all a store lives under $XDG_DATA_HOME/gffs (index + one local
backend). Every mistake in a file becomes a ConfigError whose message names
the file, the table and the key.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gffs.errors import ConfigError

# chains gffs reads NFTs from (the [nft] section names their RPC/API endpoints;
# gffs/nft/validate.py checks user.nft.chain against them)
EVM_CHAINS = {"ethereum", "sepolia", "polygon", "base", "arbitrum", "optimism"}
TEZOS_CHAINS = {"tezos", "ghostnet"}
CHAINS = EVM_CHAINS | TEZOS_CHAINS

STORE_KEYS = {"data_dir", "cache_mb", "log_file", "backend_timeout", "backend_retry_max",
              "block_size_kb", "analyze_images", "index_backup_interval", "index_backup_keep",
              "index_backup_to", "staging_mb"}
POLICY_KEYS = {"copies", "backends", "weights"}


@dataclass
class BackendConfig:
    name: str
    type: str
    options: dict[str, Any]
    deferred: bool = False   # copies made in the background, not before close() returns
    optional: bool = False   # may be missing or unreachable when the store is mounted
    encrypt: bool = False    # objects sealed and names keyed (docs/ENCRYPTION.md)


@dataclass
class PolicyConfig:
    """Where a flow's chunks go: how many copies, on which backends, with what weights."""

    copies: int
    backends: list[str]
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class NftConfig:
    """[nft]: where token data comes from and how much of it gffs accepts (docs/NFT.md)."""

    rpc: dict[str, str] = field(default_factory=dict)   # chain -> JSON-RPC or TzKT API URL
    ipfs_backend: str | None = None   # a [backends.X] of type ipfs, used to cat ipfs:// URIs
    ipfs_gateway: str | None = None   # else an HTTP gateway (https://host)
    arweave_gateway: str = "https://arweave.net"
    timeout: float = 20.0             # seconds for one fetch or RPC call, overall
    max_metadata_kb: int = 256
    max_media_mb: int = 64
    from_block: int = 0               # first block scanned for transfer logs
    log_block_range: int = 10000      # blocks per eth_getLogs request


@dataclass
class Config:
    data_dir: Path
    backends: list[BackendConfig] = field(default_factory=list)
    placement: PolicyConfig | None = None
    flows: dict[str, PolicyConfig] = field(default_factory=dict)
    backend_timeout: float = 60.0
    backend_retry_max: float = 60.0
    block_size_kb: int = 1024     # for a new store only; a store keeps its own
    analyze_images: bool = True   # read image facts (user.gf.image.*) after each write
    cache_mb: int = 32
    staging_mb: int = 1024        # bytes waiting for remote uploads (0: close() waits for them)
    log_file: Path | None = None
    nft: NftConfig = field(default_factory=NftConfig)
    index_backup_interval: float = 600.0   # seconds between index backups; 0 = off
    index_backup_keep: int = 10            # backup versions kept per backend
    index_backup_to: list[str] | None = None   # backends receiving backups (None = all)
    source: str = "defaults"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def staging_dir(self) -> Path:
        return self.data_dir / "staging"

    @property
    def lock_file(self) -> Path:
        return self.data_dir / "gffs.lock"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "gffs"


def _expect(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {message}")


def _unknown(table: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    _expect(not extra, where, f"unknown key {extra[0]!r}" if extra else "")


def load_config(path: str | os.PathLike | None = None, data_dir: str | None = None) -> Config:
    """Read *path* (optional) and apply defaults; raise ConfigError on any mistake."""
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        p = Path(path).expanduser()
        where = str(p)
        try:
            text = p.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
        try:
            raw = tomllib.loads(text.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
        if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO) and _mentions_secrets(raw):
            raise ConfigError(f"{p} holds credentials and is readable by others; chmod 600 it")
    _unknown(raw, {"store", "backends", "placement", "nft"}, where)

    store = raw.get("store", {})
    _expect(isinstance(store, dict), where, "[store] must be a table")
    _unknown(store, STORE_KEYS, f"{where} [store]")
    ddir = Path(data_dir or store.get("data_dir") or default_data_dir()).expanduser()
    cache_mb = store.get("cache_mb", 32)
    _expect(isinstance(cache_mb, int) and 1 <= cache_mb <= 65536, f"{where} [store]",
            "cache_mb must be an integer between 1 and 65536")
    log_file = store.get("log_file")
    timeout = store.get("backend_timeout", 60)
    _expect(isinstance(timeout, (int, float)) and 1 <= timeout <= 3600, f"{where} [store]",
            "backend_timeout must be a number of seconds between 1 and 3600")
    retry_max = store.get("backend_retry_max", 60)
    _expect(isinstance(retry_max, (int, float)) and 1 <= retry_max <= 3600, f"{where} [store]",
            "backend_retry_max must be a number of seconds between 1 and 3600")
    block_kb = store.get("block_size_kb", 1024)
    _expect(isinstance(block_kb, int) and 64 <= block_kb <= 16384 and block_kb & (block_kb - 1) == 0,
            f"{where} [store]", "block_size_kb must be a power of two between 64 and 16384")
    analyze = store.get("analyze_images", True)
    _expect(isinstance(analyze, bool), f"{where} [store]", "analyze_images must be true or false")
    staging_mb = store.get("staging_mb", 1024)
    _expect(isinstance(staging_mb, int) and not isinstance(staging_mb, bool)
            and 0 <= staging_mb <= 1 << 24, f"{where} [store]",
            "staging_mb must be an integer between 0 (no staging) and 16777216")
    cfg = Config(data_dir=ddir, cache_mb=cache_mb, staging_mb=staging_mb, backend_timeout=float(timeout),
                 block_size_kb=block_kb, analyze_images=analyze,
                 backend_retry_max=float(retry_max),
                 log_file=Path(log_file).expanduser() if log_file else None, source=where)

    backends = raw.get("backends", {})
    _expect(isinstance(backends, dict), where, "[backends] must be a table of tables")
    for name, table in backends.items():
        bwhere = f"{where} [backends.{name}]"
        _expect(isinstance(table, dict), bwhere, "must be a table")
        _expect(not name.startswith("~"), bwhere, "backend names cannot start with '~'")
        btype = table.get("type")
        _expect(isinstance(btype, str), bwhere, "'type' is required (for example \"local\")")
        opts = {k: v for k, v in table.items()
                if k not in ("type", "deferred", "optional", "encrypt")}
        deferred, optional = table.get("deferred", False), table.get("optional", False)
        _expect(isinstance(deferred, bool), bwhere, "deferred must be true or false")
        _expect(isinstance(optional, bool), bwhere, "optional must be true or false")
        # on wherever the disk is not ours; a share source holds the publisher's plaintext
        encrypt = table.get("encrypt", btype not in ("local", *READ_ONLY_TYPES))
        _expect(isinstance(encrypt, bool), bwhere, "encrypt must be true or false")
        _expect(not (encrypt and btype == "ipfs-share"), bwhere,
                "an ipfs-share source is read-only: it cannot be encrypted")
        if btype == "local":
            _unknown(opts, {"path"}, bwhere)
            _expect(isinstance(opts.get("path"), str), bwhere, "'path' must be a string")
        cfg.backends.append(BackendConfig(name, btype, opts, deferred, optional, encrypt))
    if not cfg.backends:
        cfg.backends.append(BackendConfig("local", "local", {"path": str(ddir / "local")}))

    placement = raw.get("placement", {})
    _expect(isinstance(placement, dict), where, "[placement] must be a table")
    flows = placement.get("flows", {})
    _expect(isinstance(flows, dict), f"{where} [placement.flows]", "must be a table of flows")
    names = [b.name for b in cfg.backends]
    cfg.placement = _policy({k: v for k, v in placement.items() if k != "flows"},
                            f"{where} [placement]", names, None,
                            [b.name for b in cfg.backends if b.type not in READ_ONLY_TYPES])
    for flow, table in flows.items():
        fwhere = f"{where} [placement.flows.{flow}]"
        _expect(isinstance(table, dict), fwhere, "must be a table")
        cfg.flows[flow] = _policy(table, fwhere, names, cfg.placement)
    cfg.nft = _nft(raw.get("nft", {}), f"{where} [nft]", cfg.backends)
    _index_backup(cfg, store, f"{where} [store]", names)
    return cfg


def _index_backup(cfg: Config, store: dict, where: str, names: list[str]) -> None:
    """[store] index_backup_*: how often, how many versions, to which backends."""
    interval = store.get("index_backup_interval", 600)
    _expect(isinstance(interval, (int, float)) and not isinstance(interval, bool)
            and (interval == 0 or 1 <= interval <= 86400), where,
            "index_backup_interval must be 0 (off) or a number of seconds between 1 and 86400")
    keep = store.get("index_backup_keep", 10)
    _expect(isinstance(keep, int) and not isinstance(keep, bool) and 1 <= keep <= 1000, where,
            "index_backup_keep must be an integer between 1 and 1000")
    to = store.get("index_backup_to")
    if to is not None:
        _expect(isinstance(to, list) and to and all(isinstance(b, str) for b in to), where,
                "index_backup_to must be a non-empty list of backend names")
        for b in to:
            _expect(b in names, where, f"index_backup_to: unknown backend {b!r} "
                                       f"(configured: {', '.join(names)})")
    cfg.index_backup_interval, cfg.index_backup_keep = float(interval), keep
    cfg.index_backup_to = list(to) if to is not None else None


def _nft(table: Any, where: str, backends: list[BackendConfig]) -> NftConfig:
    _expect(isinstance(table, dict), where, "must be a table")
    rpc_keys = {f"{c}_api" if c in TEZOS_CHAINS else f"{c}_rpc": c for c in CHAINS}
    limits = {"timeout": (1, 600), "max_metadata_kb": (1, 16384), "max_media_mb": (1, 4096),
              "from_block": (0, 2 ** 63), "log_block_range": (1, 10 ** 7)}
    _unknown(table, set(rpc_keys) | set(limits) |
             {"ipfs_backend", "ipfs_gateway", "arweave_gateway"}, where)
    out = NftConfig()
    for key, value in table.items():
        if key in limits:
            lo, hi = limits[key]
            ok = isinstance(value, int) or (key == "timeout" and isinstance(value, float))
            _expect(ok and not isinstance(value, bool) and lo <= value <= hi, where,
                    f"{key} must be a number between {lo} and {hi}")
            setattr(out, key, value)
        elif key == "ipfs_backend":
            ipfs = [b.name for b in backends if b.type == "ipfs"]
            _expect(value in ipfs, where, f"ipfs_backend must name a backend of type ipfs "
                                          f"(configured: {', '.join(ipfs) or 'none'})")
            out.ipfs_backend = value
        else:
            _expect(isinstance(value, str) and value.startswith(("http://", "https://"))
                    and " " not in value, where, f"{key} must be an http:// or https:// URL")
            if key in rpc_keys:
                out.rpc[rpc_keys[key]] = value.rstrip("/")
            else:
                setattr(out, key, value.rstrip("/"))
    if out.ipfs_backend is None:
        ipfs = [b.name for b in backends if b.type == "ipfs"]
        out.ipfs_backend = ipfs[0] if len(ipfs) == 1 else None
    return out


READ_ONLY_TYPES = ("ipfs-share",)    # sources of imported flows: never hold this store's chunks


def _policy(table: dict, where: str, names: list[str], default: PolicyConfig | None,
            writable: list[str] | None = None) -> PolicyConfig:
    _unknown(table, POLICY_KEYS, where)
    backends = table.get("backends", default.backends if default else (writable or names))
    _expect(isinstance(backends, list) and backends and all(isinstance(b, str) for b in backends),
            where, "backends must be a non-empty list of backend names")
    for b in backends:
        _expect(b in names, where, f"unknown backend {b!r} (configured: {', '.join(names)})")
    copies = table.get("copies", default.copies if default else 1)
    _expect(isinstance(copies, int) and 1 <= copies <= len(backends), where,
            f"copies must be an integer between 1 and the number of its backends ({len(backends)})")
    weights = table.get("weights", {})
    _expect(isinstance(weights, dict), where, "weights must be a table of backend = number")
    for b, w in weights.items():
        _expect(b in backends, where, f"weight for {b!r}, which is not one of its backends")
        _expect(isinstance(w, (int, float)) and w > 0, where, f"weight of {b!r} must be a positive number")
    return PolicyConfig(copies, list(backends), {b: float(w) for b, w in weights.items()})


def _mentions_secrets(raw: dict) -> bool:
    words = ("secret", "password", "token", "key_id", "access_key")
    def walk(v: Any) -> bool:
        if isinstance(v, dict):
            return any(any(w in str(k).lower() for w in words) or walk(x) for k, x in v.items())
        return False
    return walk(raw)
