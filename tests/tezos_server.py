"""A loopback TzKT-style indexer API serving responses in the shapes TzKT documents.

Only what gffs asks is served: ``/v1/tokens`` (TokenObj list), ``/v1/tokens/balances``
(TokenBalance list, filtered by token or by account, paged with limit/offset) and
``/v1/contracts/{KT1}/bigmaps/token_metadata/keys/{id}`` (BigMapKey whose value is the
TZIP-12 ``{token_id, token_info}`` pair with bytes as hex; 204 when absent, as TzKT).
The test changes ``tokens``, ``balances`` and ``token_info`` to model mints and transfers.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def tezos_address(prefix: str, n: int) -> str:
    """A well-formed (not checksummed) tz1/KT1 address, distinct per *n*."""
    body = ""
    for i in range(33):
        body += B58[(n * 7 + i * 13) % 58]
    return prefix + body


class TzktServer:
    def __init__(self) -> None:
        self.tokens: dict[tuple[str, int], dict] = {}          # -> {"standard", "metadata"}
        self.balances: dict[tuple[str, int], dict[str, int]] = {}
        self.token_info: dict[tuple[str, int], dict[str, str]] = {}   # text values
        self.requests: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(parts.query).items()}
                api.requests.append(self.path)
                status, body = api.answer(parts.path, q)
                payload = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _token(self, key: tuple[str, int]) -> dict:
        contract, tid = key
        t = self.tokens[key]
        return {"id": hash(key) & 0xFFFFFF, "contract": {"address": contract},
                "tokenId": str(tid), "standard": t.get("standard", "fa2"),
                "totalSupply": str(sum(self.balances.get(key, {}).values())),
                "metadata": t.get("metadata")}

    def _balance(self, key: tuple[str, int], account: str, amount: int) -> dict:
        return {"id": hash((key, account)) & 0xFFFFFF, "account": {"address": account},
                "token": self._token(key), "balance": str(amount), "transfersCount": 1,
                "firstLevel": 100, "lastLevel": 200}

    def answer(self, path: str, q: dict[str, str]) -> tuple[int, object]:
        if path == "/v1/tokens":
            key = (q.get("contract", ""), int(q.get("tokenId", "-1")))
            return 200, [self._token(key)] if key in self.tokens else []
        if path == "/v1/tokens/balances":
            rows = []
            for key, holders in sorted(self.balances.items()):
                if "token.contract" in q and key != (q["token.contract"], int(q["token.tokenId"])):
                    continue
                if "token.contract.in" in q and key[0] not in q["token.contract.in"].split(","):
                    continue
                for account, amount in sorted(holders.items()):
                    if amount > int(q.get("balance.gt", "-1")) and \
                            q.get("account", account) == account:
                        rows.append(self._balance(key, account, amount))
            offset, limit = int(q.get("offset", "0")), int(q.get("limit", "100"))
            return 200, rows[offset:offset + limit]
        bits = path.split("/")
        if len(bits) == 8 and bits[1:3] == ["v1", "contracts"] and bits[4:7] == \
                ["bigmaps", "token_metadata", "keys"]:
            key = (bits[3], int(bits[7]))
            if key not in self.token_info:
                return 204, None
            info = {k: v.encode().hex() for k, v in self.token_info[key].items()}
            return 200, {"id": 1, "active": True, "hash": "expruTest", "key": str(key[1]),
                         "value": {"token_id": str(key[1]), "token_info": info},
                         "firstLevel": 100, "lastLevel": 100, "updates": 1}
        return 404, {"code": 404, "errors": "not found"}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
