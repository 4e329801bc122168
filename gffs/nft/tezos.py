"""Tezos FA2 tokens (TZIP-12 / TZIP-21) through a TzKT-style indexer REST API.

Why an indexer and not a node's RPC: on a node, a token's owner lives in the
contract's own ledger big map, whose layout differs between FA2 contracts
(address -> nat, (address, nat) -> nat, nat -> address ...), and reading a big
map key needs the Micheline-packed, blake2b-hashed key; a node also cannot
list the tokens an address owns. TzKT indexes FA2 balances uniformly, serves
the token_metadata big map as JSON and is open source (self-hostable), which
is why most Tezos tools use it.

Used endpoints: ``/v1/tokens`` (does the token exist, its standard),
``/v1/tokens/balances`` (holders of a token; tokens of an account) and
``/v1/contracts/{KT1}/bigmaps/token_metadata/keys/{id}`` (the TZIP-12
token_info map: ``""`` holds the metadata URI, other keys on-chain fields,
all as hex bytes). The indexer's answers are checked like any untrusted input.
"""

from __future__ import annotations

from typing import Any, Iterator

from gffs.config import NftConfig
from gffs.nft.ethereum import ChainToken
from gffs.nft.fetch import Fetcher, NftError, parse_json
from gffs.nft.validate import InvalidNftValue, validate

API_LIMIT = 16 * 1024 * 1024    # bytes of one indexer answer
PAGE = 100                      # rows per indexer page
MAX_PAGES = 100                 # 10,000 tokens per scan


class TezosClient:
    def __init__(self, chain: str, nft: NftConfig, fetcher: Fetcher) -> None:
        url = nft.rpc.get(chain)
        if not url:
            raise NftError(f"no indexer API for {chain}: set [nft] {chain}_api in the config "
                           "(a TzKT API, e.g. https://api.tzkt.io)")
        self.chain, self.url, self.fetcher = chain, url, fetcher

    def _get(self, path: str, params: dict[str, str], what: str) -> Any:
        return self.fetcher.get_json(f"{self.url}{path}", params, API_LIMIT, what)

    def _address(self, value: Any, what: str) -> str:
        if not isinstance(value, str):
            raise NftError(f"{what}: the indexer sent no address")
        try:
            validate("owner", value.encode(), {"chain": self.chain})
        except InvalidNftValue as exc:
            raise NftError(f"{what}: the indexer sent a bad address ({exc})") from None
        return value

    def token(self, contract: str, token_id: int, standard: str | None,
              owner_hint: str | None = None) -> ChainToken:
        if standard not in (None, "fa2"):
            raise NftError(f"{self.chain} tokens are fa2, not {standard}")
        what = f"{self.chain} token {contract}:{token_id}"
        rows = self._get("/v1/tokens", {"contract": contract, "tokenId": str(token_id)}, what)
        if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict):
            raise NftError(f"{what}: the indexer knows no such token")
        if rows[0].get("standard") != "fa2":
            raise NftError(f"{what}: a {rows[0].get('standard')!s:.20} token, not FA2")
        holders = self.holders(contract, token_id, what)
        token = ChainToken("fa2", None, None)
        if owner_hint in holders or len(holders) == 1:
            token.owner = owner_hint if owner_hint in holders else holders[0]
        else:
            token.notes.append(f"token {token_id} has {len(holders) or 'no'} holders"
                               + ("; pass --owner to name one" if holders else ""))
        key = self._get(f"/v1/contracts/{contract}/bigmaps/token_metadata/keys/{token_id}", {},
                        f"{what} token_metadata")
        info = key.get("value", {}).get("token_info") if isinstance(key, dict) and \
            isinstance(key.get("value"), dict) else None
        if isinstance(info, dict):
            fields = {k: _hex_text(v, f"{what} token_info[{k!r}]") for k, v in info.items()
                      if isinstance(k, str)}
            token.token_uri = fields.pop("", None) or None
            token.metadata = _typed(fields)
        elif isinstance(rows[0].get("metadata"), dict):
            token.metadata = rows[0]["metadata"]      # off-chain view, resolved by the indexer
            token.notes.append("no token_metadata big map entry: metadata as indexed by the API")
        return token

    def holders(self, contract: str, token_id: int, what: str) -> list[str]:
        rows = self._get("/v1/tokens/balances",
                         {"token.contract": contract, "token.tokenId": str(token_id),
                          "balance.gt": "0", "limit": str(PAGE)}, f"{what} holders")
        if not isinstance(rows, list):
            raise NftError(f"{what} holders: the indexer answered {type(rows).__name__}, not a list")
        return [self._address((r.get("account") or {}).get("address"), f"{what} holder")
                for r in rows if isinstance(r, dict)]

    def owned(self, owner: str, contracts: list[str]) -> Iterator[tuple[str, int, str]]:
        """(contract, token id, "fa2") of every FA2 token *owner* holds."""
        params = {"account": owner, "balance.gt": "0", "token.standard": "fa2",
                  "limit": str(PAGE), "sort.asc": "id"}
        if contracts:
            params["token.contract.in"] = ",".join(contracts)
        for page in range(MAX_PAGES):
            rows = self._get("/v1/tokens/balances", {**params, "offset": str(page * PAGE)},
                             f"{self.chain} tokens of {owner}")
            if not isinstance(rows, list):
                raise NftError(f"tokens of {owner}: the indexer answered something else than a list")
            for r in rows:
                tok = r.get("token") if isinstance(r, dict) else None
                if not isinstance(tok, dict):
                    continue
                contract = self._address((tok.get("contract") or {}).get("address"), "token contract")
                tid = tok.get("tokenId")
                if isinstance(tid, str) and tid.isdigit() and len(tid) < 78:
                    yield contract, int(tid), "fa2"
            if len(rows) < PAGE:
                return


def _hex_text(value: Any, what: str) -> str:
    """TZIP-12 token_info values are bytes, which TzKT shows as hex."""
    try:
        return bytes.fromhex(value).decode("utf-8")
    except (TypeError, ValueError):
        raise NftError(f"{what}: not hex-encoded UTF-8 bytes") from None


def _typed(fields: dict[str, str]) -> dict[str, Any]:
    """On-chain TZIP-21 fields are JSON-encoded where they are not plain strings."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if k == "attributes":
            try:
                out[k] = parse_json(v.encode(), "token_info attributes")
            except NftError:
                continue
        else:
            out[k] = v
    return out
