"""Store keys on disk: one JSON file per store id, mode 0600, optionally under a passphrase.

``$XDG_CONFIG_HOME/gffs/<store id>.key`` (default ``~/.config/gffs``). Without a
passphrase the file holds the key itself; with one, the key is sealed with
ChaCha20-Poly1305 under a key-encryption key from scrypt (memory-hard;
parameters stored in the file, so they can be raised later). The store id is
the associated data: a file renamed to another store's id does not open.
The passphrase comes from ``$GFFS_KEY_PASSPHRASE`` or, on a terminal, a prompt.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from gffs.crypto.seal import KEY_BYTES, StoreKey
from gffs.errors import ConfigError

PASSPHRASE_ENV = "GFFS_KEY_PASSPHRASE"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 16, 8, 1     # 64 MiB, ~0.2 s
FILE_FORMAT = 1


def key_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "gffs"


def key_path(store_id: str) -> Path:
    return key_dir() / f"{store_id}.key"


def _kek(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())


def encode_key(store_id: str, key: StoreKey, passphrase: str | None = None) -> bytes:
    """The key file's bytes for *key* (sealed under *passphrase* when one is given)."""
    doc: dict = {"format": FILE_FORMAT, "store_id": store_id, "key_id": key.key_id}
    if key.previous:   # a rotation in progress: the old keys still open objects
        doc["previous_key_ids"] = [old.key_id for old in key.previous]
    masters = b"".join(k.master for k in key.ring())
    if passphrase:
        salt, nonce = os.urandom(16), os.urandom(12)
        kek = _kek(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        doc["kdf"] = {"name": "scrypt", "salt": salt.hex(), "n": SCRYPT_N, "r": SCRYPT_R,
                      "p": SCRYPT_P}
        doc["nonce"] = nonce.hex()
        doc["sealed_key"] = ChaCha20Poly1305(kek).encrypt(nonce, masters,
                                                           store_id.encode()).hex()
    else:
        doc["key"] = masters.hex()
    return (json.dumps(doc, indent=1) + "\n").encode()


def parse_key_file(raw: bytes, where: str) -> dict:
    """The key file's fields, checked for shape (not yet unsealed)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{where} is not a gffs key file") from None
    if (not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT
            or not isinstance(doc.get("store_id"), str) or not isinstance(doc.get("key_id"), str)
            or not (isinstance(doc.get("key"), str) or isinstance(doc.get("sealed_key"), str))):
        raise ConfigError(f"{where} is not a gffs key file (format {FILE_FORMAT})")
    return doc


def needs_passphrase(doc: dict) -> bool:
    return "sealed_key" in doc


def ask_passphrase(prompt: str, confirm: bool = False) -> str | None:
    """$GFFS_KEY_PASSPHRASE, else a prompt on a terminal, else None."""
    env = os.environ.get(PASSPHRASE_ENV)
    if env is not None:
        return env
    if not sys.stdin.isatty():
        return None
    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("again: ") != first:
        raise ConfigError("the two passphrases differ")
    return first


def unseal(doc: dict, where: str, passphrase: str | None = None) -> StoreKey:
    """The StoreKey of a parsed key file; ConfigError for a wrong or missing passphrase."""
    try:
        if not needs_passphrase(doc):
            masters = bytes.fromhex(doc["key"])
        else:
            if passphrase is None:
                passphrase = ask_passphrase(f"passphrase of the gffs key {where}: ")
            if passphrase is None:
                raise ConfigError(f"{where} is protected by a passphrase: set "
                                  f"{PASSPHRASE_ENV} or run on a terminal")
            kdf = doc["kdf"]
            kek = _kek(passphrase, bytes.fromhex(kdf["salt"]), int(kdf["n"]), int(kdf["r"]),
                       int(kdf["p"]))
            masters = ChaCha20Poly1305(kek).decrypt(bytes.fromhex(doc["nonce"]),
                                                    bytes.fromhex(doc["sealed_key"]),
                                                    doc["store_id"].encode())
        # the current key, then the keys a rotation is replacing (docs/ENCRYPTION.md)
        ring = [StoreKey(masters[i:i + KEY_BYTES]) for i in range(0, len(masters), KEY_BYTES)]
        key, key.previous = ring[0], ring[1:]
    except InvalidTag:
        raise ConfigError(f"wrong passphrase for {where}") from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ConfigError(f"{where} is damaged: {exc}") from None
    if key.key_id != doc["key_id"] or [k.key_id for k in key.previous] != doc.get(
            "previous_key_ids", []):
        raise ConfigError(f"{where} is damaged: its key does not match its key id")
    return key


def read_key(store_id: str, passphrase: str | None = None) -> StoreKey | None:
    """The key of *store_id* from its file, or None when there is no file."""
    path = key_path(store_id)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
    doc = parse_key_file(raw, str(path))
    if doc["store_id"] != store_id:
        raise ConfigError(f"{path} holds the key of store {doc['store_id']}, not {store_id}")
    return unseal(doc, str(path), passphrase)


def write_key_file(path: Path, raw: bytes, replace: bool = False) -> None:
    """Write a key file atomically, mode 0600 from its first byte, directory 0700."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists() and not replace:
        raise ConfigError(f"{path} already exists; not replacing a key")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def new_key() -> StoreKey:
    return StoreKey(os.urandom(KEY_BYTES))
