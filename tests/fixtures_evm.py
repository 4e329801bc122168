"""A real EVM behind a real JSON-RPC endpoint, our own NFT contracts, and a loopback web server.

``solc_artifacts`` (session): contracts/*.sol compiled offline with solcjs (npm
package ``solc``, installed by tools/setup.sh into .cache/solc); the output is
cached per source hash in .cache/solc/build.

``evm``: a fresh chain (web3 EthereumTesterProvider: eth-tester + py-evm) and
a loopback HTTP JSON-RPC server forwarding to it, so gffs' web3 HTTPProvider
talks to a real EVM over real HTTP. Helpers deploy and call the contracts.

``web``: a loopback HTTP server for token metadata and media, with routes the
test sets (``web.put(path, body)``), including hostile ones (slow drip).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SOLCJS = REPO / ".cache" / "solc" / "node_modules" / ".bin" / "solcjs"
CONTRACTS = REPO / "contracts"


@pytest.fixture(scope="session")
def solc_artifacts() -> dict[str, dict]:
    """{contract name: {"abi": ..., "bytecode": "0x..."}} for contracts/*.sol."""
    if not SOLCJS.exists():
        pytest.skip(f"solcjs not installed at {SOLCJS} (tools/setup.sh installs it)")
    sources = {p.name: {"content": p.read_text()} for p in sorted(CONTRACTS.glob("*.sol"))}
    request = {"language": "Solidity", "sources": sources,
               "settings": {"evmVersion": "shanghai", "optimizer": {"enabled": False},
                            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}}}}
    blob = json.dumps(request, sort_keys=True).encode()
    version = subprocess.run([str(SOLCJS), "--version"], capture_output=True, text=True,
                             check=True, timeout=120).stdout.strip()
    cache = REPO / ".cache" / "solc" / "build" / \
        f"{hashlib.sha256(blob + version.encode()).hexdigest()[:24]}.json"
    if not cache.exists():
        res = subprocess.run([str(SOLCJS), "--standard-json"], input=blob, capture_output=True,
                             check=True, timeout=300)
        text = res.stdout.decode()
        out = json.loads(text[text.index("{"):])   # solcjs may print a notice line first
        errors = [e for e in out.get("errors", []) if e.get("severity") == "error"]
        assert not errors, errors
        artifacts = {name: {"abi": c["abi"], "bytecode": "0x" + c["evm"]["bytecode"]["object"]}
                     for unit in out["contracts"].values() for name, c in unit.items()}
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(artifacts))
        os.replace(tmp, cache)
    return json.loads(cache.read_text())


def _jsonable(value: Any) -> Any:
    """eth-tester's Python values -> JSON-RPC wire values (quantities and data as hex)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


class EvmNode:
    """eth-tester chain + loopback JSON-RPC server; ``.w3``, ``.accounts``, ``.rpc_url``."""

    def __init__(self, artifacts: dict[str, dict]) -> None:
        from eth_abi import encode as abi_encode
        from web3 import EthereumTesterProvider, Web3
        self.artifacts = artifacts
        self.w3 = Web3(EthereumTesterProvider())
        self.accounts = list(self.w3.eth.accounts)
        self.lock = threading.Lock()
        node = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                reply: dict[str, Any] = {"jsonrpc": "2.0", "id": req.get("id")}
                try:
                    with node.lock:
                        resp = node.w3.manager._make_request(req["method"], req.get("params", []))
                    if "error" in resp:
                        reply["error"] = resp["error"]
                    else:
                        reply["result"] = _jsonable(resp["result"])
                except Exception as exc:  # noqa: BLE001 - every EVM failure becomes an RPC error
                    message = str(exc)
                    reply["error"] = {"code": 3 if "revert" in message else -32000,
                                      "message": message}
                    if "execution reverted: " in message:
                        reason = message.split("execution reverted: ", 1)[1]
                        reply["error"]["data"] = "0x08c379a0" + abi_encode(["string"], [reason]).hex()
                body = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.rpc_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def deploy(self, name: str, *args: Any) -> Any:
        art = self.artifacts[name]
        factory = self.w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
        with self.lock:
            tx = factory.constructor(*args).transact({"from": self.accounts[0]})
            receipt = self.w3.eth.wait_for_transaction_receipt(tx)
        return self.w3.eth.contract(address=receipt.contractAddress, abi=art["abi"])

    def send(self, call: Any, sender: str | None = None) -> None:
        """Run a state-changing contract call as *sender* (default: the deployer)."""
        with self.lock:
            tx = call.transact({"from": sender or self.accounts[0]})
            receipt = self.w3.eth.wait_for_transaction_receipt(tx)
        assert receipt.status == 1

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def evm(solc_artifacts):
    node = EvmNode(solc_artifacts)
    try:
        yield node
    finally:
        node.close()


class WebServer:
    """Loopback HTTP: ``put(path, body, status=200, drip=None)``; ``url(path)``; ``hits``."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, float | None]] = {}
        self.hits: list[str] = []
        self.stop = threading.Event()
        web = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                web.hits.append(path)
                status, body, drip = web.routes.get(path, (404, b"not found", None))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if drip is None:
                    self.wfile.write(body)
                    return
                deadline = time.monotonic() + 30      # never drips for ever
                for i in range(len(body)):
                    if web.stop.is_set() or time.monotonic() > deadline:
                        return
                    try:
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                    except OSError:
                        return                        # the client gave up, as it should
                    time.sleep(drip)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def put(self, path: str, body: bytes | str | dict | list, status: int = 200,
            drip: float | None = None) -> str:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        self.routes[path] = (status, body, drip)
        return self.url(path)

    def url(self, path: str) -> str:
        return self.base + path

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def web():
    server = WebServer()
    try:
        yield server
    finally:
        server.close()
