"""Validation of user.nft.* attributes: a bad value is refused, nothing changes.

The attributes describe the token an image represents. They come from users
(setfattr) and from chains (untrusted JSON), so every value is checked for
shape and size before it is stored; the chain is never contacted here.
"""

from __future__ import annotations

import json
import re

from gffs.config import CHAINS, EVM_CHAINS, TEZOS_CHAINS

PREFIX = "user.nft."

STANDARDS = {"erc721", "erc1155", "fa2"}
URI_SCHEMES = ("ipfs://", "https://", "http://", "data:", "ar://")

_EVM_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_TEZOS_ADDRESS = re.compile(rf"^(tz1|tz2|tz3|tz4|KT1)[{_B58}]{{33}}$")
_TOKEN_ID = re.compile(r"^(0|[1-9][0-9]{0,77})$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

MAX_TEXT = {"name": 256, "description": 16 * 1024}
MAX_URI = 4096
MAX_ATTRIBUTES = 64 * 1024


class InvalidNftValue(ValueError):
    """The value does not fit the attribute (the caller answers EINVAL)."""


def _address(value: str, chain: str | None, what: str, contract: bool) -> None:
    evm = bool(_EVM_ADDRESS.match(value))
    tezos = bool(_TEZOS_ADDRESS.match(value))
    if contract and tezos and not value.startswith("KT1"):
        raise InvalidNftValue(f"{what}: a Tezos contract address starts with KT1")
    if not (evm or tezos):
        raise InvalidNftValue(f"{what}: not an Ethereum (0x + 40 hex) or Tezos address")
    if chain in EVM_CHAINS and not evm:
        raise InvalidNftValue(f"{what}: {chain} needs a 0x address")
    if chain in TEZOS_CHAINS and not tezos:
        raise InvalidNftValue(f"{what}: {chain} needs a tz/KT1 address")


def validate(key: str, raw: bytes, current: dict[str, str]) -> None:
    """Raise InvalidNftValue unless *raw* is acceptable for ``user.nft.<key>``.

    *current* holds the file's other user.nft.* values (decoded), for checks
    that depend on the chain.
    """
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidNftValue(f"{key}: not UTF-8") from None
    chain = current.get("chain")
    if key == "chain":
        if value not in CHAINS:
            raise InvalidNftValue(f"chain: one of {', '.join(sorted(CHAINS))}")
        for other in ("contract", "owner"):
            if other in current:
                _address(current[other], value, other, other == "contract")
    elif key in ("contract", "owner"):
        _address(value, chain, key, key == "contract")
    elif key == "token_id":
        if not _TOKEN_ID.match(value) or int(value) >= 2 ** 256:
            raise InvalidNftValue("token_id: a decimal integer from 0 to 2^256-1")
    elif key == "standard":
        if value not in STANDARDS:
            raise InvalidNftValue(f"standard: one of {', '.join(sorted(STANDARDS))}")
    elif key in ("token_uri", "media_uri"):
        if not value.startswith(URI_SCHEMES) or len(raw) > MAX_URI or _CONTROL.search(value) \
                or " " in value:
            raise InvalidNftValue(f"{key}: an ipfs://, https://, http://, ar:// or data: URI "
                                  f"of at most {MAX_URI} bytes")
    elif key in MAX_TEXT:
        if len(raw) > MAX_TEXT[key] or "\x00" in value:
            raise InvalidNftValue(f"{key}: text without NUL, at most {MAX_TEXT[key]} bytes")
    elif key == "attributes":
        if len(raw) > MAX_ATTRIBUTES:
            raise InvalidNftValue(f"attributes: at most {MAX_ATTRIBUTES} bytes")
        try:
            parsed = json.loads(value)
        except ValueError:
            raise InvalidNftValue("attributes: not JSON") from None
        if not isinstance(parsed, list) or not all(isinstance(a, dict) for a in parsed):
            raise InvalidNftValue("attributes: a JSON array of objects")
    else:
        raise InvalidNftValue(f"unknown attribute user.nft.{key}")
