"""ERC-721 and ERC-1155 tokens read through web3.py from a JSON-RPC endpoint.

Only view calls and eth_getLogs are used: nothing is signed or sent. The
standard comes from ERC-165 unless given; the owner of an ERC-721 token is
ownerOf; an ERC-1155 token has holders, found from its transfer logs and
confirmed with balanceOf (one holder: that is the owner; several: the owner
the caller named, or none). Tokens an address owns are found the same way:
transfer logs to it, each confirmed by a call at the latest block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import requests
from eth_abi import decode as abi_decode
from web3 import HTTPProvider, Web3
from web3.exceptions import ContractLogicError, Web3Exception

from gffs.config import NftConfig
from gffs.nft.fetch import NftError, is_loopback

ERC165_ERC721 = bytes.fromhex("80ac58cd")
ERC165_ERC1155 = bytes.fromhex("d9b67a26")
TRANSFER = Web3.keccak(text="Transfer(address,address,uint256)")
TRANSFER_SINGLE = Web3.keccak(text="TransferSingle(address,address,address,uint256,uint256)")
TRANSFER_BATCH = Web3.keccak(text="TransferBatch(address,address,address,uint256[],uint256[])")


def _fn(name: str, inputs: list[str], outputs: list[str]) -> dict:
    return {"type": "function", "name": name, "stateMutability": "view",
            "inputs": [{"name": f"a{i}", "type": t} for i, t in enumerate(inputs)],
            "outputs": [{"name": "", "type": t} for t in outputs]}


ABI = [_fn("supportsInterface", ["bytes4"], ["bool"]),
       _fn("ownerOf", ["uint256"], ["address"]),
       _fn("tokenURI", ["uint256"], ["string"]),
       _fn("uri", ["uint256"], ["string"]),
       _fn("balanceOf", ["address", "uint256"], ["uint256"])]


@dataclass
class ChainToken:
    """What the chain says about one token (metadata is fetched from token_uri later)."""

    standard: str
    owner: str | None
    token_uri: str | None
    metadata: dict[str, Any] | None = None     # inline metadata (Tezos on-chain fields)
    notes: list[str] = field(default_factory=list)


def _topic(address: str) -> str:
    return "0x" + "00" * 12 + address[2:].lower()


class EvmClient:
    def __init__(self, chain: str, nft: NftConfig) -> None:
        url = nft.rpc.get(chain)
        if not url:
            raise NftError(f"no JSON-RPC endpoint for {chain}: set [nft] {chain}_rpc in the config")
        session = requests.Session()
        session.trust_env = not is_loopback(url)
        self.chain, self.url = chain, url
        self.w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": nft.timeout}, session=session,
                                    exception_retry_configuration=None))
        self.from_block = nft.from_block
        self.block_range = nft.log_block_range

    def _ask(self, what: str, call: Callable[[], Any]) -> Any:
        """One RPC round trip; every failure becomes an NftError saying what was asked."""
        try:
            return call()
        except ContractLogicError as exc:
            raise NftError(f"{what}: the contract refused ({exc.message or 'reverted'})") from None
        except requests.Timeout:
            raise NftError(f"{what}: {self.url} gave no answer in time") from None
        except requests.RequestException as exc:
            raise NftError(f"{what}: cannot reach {self.chain} RPC at {self.url} "
                           f"({type(exc).__name__})") from None
        except (Web3Exception, ValueError, TypeError, OverflowError) as exc:
            detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise NftError(f"{what}: {detail}") from None

    def _contract(self, address: str) -> Any:
        addr = Web3.to_checksum_address(address)
        code = self._ask(f"contract {addr}", lambda: self.w3.eth.get_code(addr))
        if not code:
            raise NftError(f"no contract at {addr} on {self.chain}")
        return self.w3.eth.contract(address=addr, abi=ABI)

    def standard(self, c: Any) -> str:
        for iface, name in ((ERC165_ERC721, "erc721"), (ERC165_ERC1155, "erc1155")):
            try:
                if c.functions.supportsInterface(iface).call():
                    return name
            except (ContractLogicError, Web3Exception, ValueError):
                pass
        raise NftError(f"{c.address} answers neither ERC-721 nor ERC-1155 to ERC-165 "
                       "supportsInterface; pass --standard")

    def token(self, contract: str, token_id: int, standard: str | None,
              owner_hint: str | None = None) -> ChainToken:
        c = self._contract(contract)
        standard = standard or self.standard(c)
        if standard == "erc721":
            owner = self._ask(f"ownerOf({token_id})", c.functions.ownerOf(token_id).call)
            uri = self._ask(f"tokenURI({token_id})", c.functions.tokenURI(token_id).call)
            return ChainToken("erc721", owner, uri or None)
        if standard != "erc1155":
            raise NftError(f"{self.chain} tokens are erc721 or erc1155, not {standard}")
        template = self._ask(f"uri({token_id})", c.functions.uri(token_id).call)
        uri = template.replace("{id}", f"{token_id:064x}") if template else None
        token = ChainToken("erc1155", None, uri)
        if owner_hint and self.balance(c, owner_hint, token_id) > 0:
            token.owner = Web3.to_checksum_address(owner_hint)
            return token
        holders = self.holders(c, token_id)
        if len(holders) == 1:
            token.owner = holders[0]
        else:
            token.notes.append(f"token {token_id} has {len(holders) or 'no'} holders"
                               + ("; pass --owner to name one" if holders else ""))
        return token

    def balance(self, c: Any, owner: str, token_id: int) -> int:
        who = Web3.to_checksum_address(owner)
        return self._ask(f"balanceOf({who}, {token_id})",
                         c.functions.balanceOf(who, token_id).call)

    def holders(self, c: Any, token_id: int) -> list[str]:
        """Accounts holding *token_id* now: receivers in its transfer logs with a balance."""
        seen: dict[str, None] = {}
        for log in self._logs([[TRANSFER_SINGLE, TRANSFER_BATCH]], [c.address]):
            if token_id in _erc1155_ids(log) and len(log["topics"]) == 4:
                seen[Web3.to_checksum_address(log["topics"][3][-20:])] = None
        return [a for a in seen if self.balance(c, a, token_id) > 0]

    def owned(self, owner: str, contracts: list[str]) -> Iterator[tuple[str, int, str]]:
        """(contract, token id, standard) of every token *owner* holds now."""
        who = Web3.to_checksum_address(owner)
        addresses = [Web3.to_checksum_address(a) for a in contracts]
        found: dict[tuple[str, int, str], None] = {}
        for log in self._logs([TRANSFER, None, _topic(who)], addresses):
            if len(log["topics"]) == 4:        # ERC-20 Transfer has 3 topics
                found[(log["address"], int.from_bytes(log["topics"][3], "big"), "erc721")] = None
        for log in self._logs([[TRANSFER_SINGLE, TRANSFER_BATCH], None, None, _topic(who)],
                              addresses):
            for tid in _erc1155_ids(log):
                found[(log["address"], tid, "erc1155")] = None
        for address, tid, standard in found:
            c = self.w3.eth.contract(address=address, abi=ABI)
            try:
                if standard == "erc721":
                    holder = self._ask(f"ownerOf({tid})", c.functions.ownerOf(tid).call)
                    mine = holder.lower() == who.lower()
                else:
                    mine = self.balance(c, who, tid) > 0
            except NftError:
                continue                        # burnt, or not really a token contract
            if mine:
                yield address, tid, standard

    def _logs(self, topics: list, addresses: list[str]) -> Iterator[dict]:
        latest = self._ask("eth_blockNumber", lambda: self.w3.eth.block_number)
        start = self.from_block
        while start <= latest:
            end = min(start + self.block_range - 1, latest)
            params: dict[str, Any] = {"fromBlock": start, "toBlock": end, "topics": topics}
            if addresses:
                params["address"] = addresses
            yield from self._ask(f"eth_getLogs {start}-{end}",
                                 lambda: self.w3.eth.get_logs(params))  # type: ignore[arg-type]
            start = end + 1


def _erc1155_ids(log: dict) -> list[int]:
    """Token ids moved by a TransferSingle/TransferBatch log ([] for anything else)."""
    try:
        if log["topics"][0] == TRANSFER_SINGLE:
            return [abi_decode(["uint256", "uint256"], bytes(log["data"]))[0]]
        if log["topics"][0] == TRANSFER_BATCH:
            return list(abi_decode(["uint256[]", "uint256[]"], bytes(log["data"]))[0])
    except Exception:  # noqa: BLE001 - malformed log data from an arbitrary contract
        return []
    return []
