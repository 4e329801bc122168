"""Tezos FA2 tokens (TZIP-12/21) through a TzKT-style indexer on loopback."""

from __future__ import annotations

import json
import os

import pytest

from test_nft_evm import admin, image_file, nft_attrs
from tezos_server import TzktServer, tezos_address

CONTRACT = tezos_address("KT1", 1)
ALICE, BOB = tezos_address("tz1", 2), tezos_address("tz1", 3)


@pytest.fixture
def tzkt():
    server = TzktServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def tezos_mount(mount_factory, tzkt, tmp_path):
    config = tmp_path / "gffs.toml"
    config.write_text(f'[nft]\ntezos_api = "{tzkt.url}"\ntimeout = 3\n')
    return mount_factory(config=config), config


def tzip21(name: str, artifact: str) -> dict:
    return {"name": name, "description": "a TZIP-21 token", "artifactUri": artifact,
            "displayUri": "ipfs://QmDisplay1234567890", "decimals": 0,
            "attributes": [{"name": "edition", "value": "1/1"}]}


def test_link_fa2_then_refresh_after_transfer(tezos_mount, tzkt, web):
    m, config = tezos_mount
    key = (CONTRACT, 0)
    tzkt.tokens[key] = {"standard": "fa2", "metadata": None}
    tzkt.balances[key] = {ALICE: 1}
    uri = web.put("/tz/0.json", tzip21("Tezos art", "ipfs://QmArtifact1234567890"))
    tzkt.token_info[key] = {"": uri}
    img = image_file(m, "tez/art.png")

    res = admin(m, config, "link", str(img), "--chain", "tezos", "--contract", CONTRACT,
                "--token", "0")
    assert res.returncode == 0, res.stderr
    attrs = nft_attrs(img)
    assert attrs["chain"] == "tezos" and attrs["standard"] == "fa2"
    assert attrs["contract"] == CONTRACT and attrs["owner"] == ALICE
    assert attrs["token_uri"] == uri and attrs["name"] == "Tezos art"
    assert attrs["media_uri"] == "ipfs://QmArtifact1234567890"     # artifactUri first
    assert json.loads(attrs["attributes"]) == [{"name": "edition", "value": "1/1"}]

    tzkt.balances[key] = {ALICE: 0, BOB: 1}
    res = admin(m, config, "refresh", str(img))
    assert res.returncode == 0, res.stderr
    assert nft_attrs(img)["owner"] == BOB


def test_on_chain_token_info_and_chain_switch(tezos_mount, tzkt):
    """token_info fields stored on chain (no URI); a file linked to an Ethereum token
    before is re-linked to Tezos cleanly (its 0x owner and contract go)."""
    m, config = tezos_mount
    key = (CONTRACT, 5)
    tzkt.tokens[key] = {"standard": "fa2"}
    tzkt.balances[key] = {ALICE: 2, BOB: 1}
    tzkt.token_info[key] = {"name": "Inline", "artifactUri": "https://a.example/x.png",
                            "attributes": '[{"name":"k","value":"v"}]'}
    img = image_file(m, "tez/inline.png")
    for k, v in [("chain", "ethereum"), ("contract", "0x" + "ab" * 20), ("token_id", "1"),
                 ("owner", "0x" + "cd" * 20)]:
        os.setxattr(img, f"user.nft.{k}", v.encode())
    res = admin(m, config, "link", str(img), "--chain", "tezos", "--contract", CONTRACT,
                "--token", "5", "--owner", BOB)
    assert res.returncode == 0, res.stderr
    attrs = nft_attrs(img)
    assert attrs == {"chain": "tezos", "contract": CONTRACT, "token_id": "5", "standard": "fa2",
                     "owner": BOB, "name": "Inline", "media_uri": "https://a.example/x.png",
                     "attributes": '[{"name":"k","value":"v"}]'}

    # two holders and no preference: no owner recorded, and it says why
    res = admin(m, config, "link", str(img), "--chain", "tezos", "--contract", CONTRACT,
                "--token", "5")
    assert res.returncode == 0 and "2 holders" in res.stderr
    assert "owner" not in nft_attrs(img)


def test_indexer_answers_are_checked(tezos_mount, tzkt):
    m, config = tezos_mount
    img = image_file(m, "tez/bad.png")
    res = admin(m, config, "link", str(img), "--chain", "tezos", "--contract", CONTRACT,
                "--token", "9")
    assert res.returncode == 1 and "no such token" in res.stderr
    key = (CONTRACT, 9)
    tzkt.tokens[key] = {"standard": "fa2"}
    tzkt.balances[key] = {"tz1<script>": 1}
    res = admin(m, config, "link", str(img), "--chain", "tezos", "--contract", CONTRACT,
                "--token", "9")
    assert res.returncode == 1 and "bad address" in res.stderr and "nothing changed" in res.stderr
    tzkt.balances[key] = {ALICE: 1}
    tzkt.token_info[key] = {"": "file:///etc/passwd"}
    res = admin(m, config, "link", str(img), "--chain", "tezos", "--contract", CONTRACT,
                "--token", "9")
    assert res.returncode == 1 and "refusing to follow a file: URI" in res.stderr
    assert nft_attrs(img) == {}


def test_scan_tezos_owner_imports_media(tezos_mount, tzkt, web):
    m, config = tezos_mount
    stored = image_file(m, "tez/stored.png", seed=3)
    other = image_file(m, "tmp/other.png", seed=4).read_bytes()
    (m.path / "tmp" / "other.png").unlink()
    for tid, body in ((1, stored.read_bytes()), (2, other)):
        key = (CONTRACT, tid)
        tzkt.tokens[key] = {"standard": "fa2"}
        tzkt.balances[key] = {ALICE: 1}
        tzkt.token_info[key] = {"": web.put(f"/tz/{tid}.json",
                                            tzip21(f"T{tid}", web.put(f"/art/{tid}", body)))}
    tzkt.tokens[(CONTRACT, 3)] = {"standard": "fa2"}
    tzkt.balances[(CONTRACT, 3)] = {BOB: 1}

    res = admin(m, config, "scan", "--owner", ALICE, "--import-to", "tezos-art")
    assert res.returncode == 0, res.stderr
    assert "1 linked, 1 imported" in res.stdout
    assert nft_attrs(stored)["token_id"] == "1"
    imported = m.path / "tezos-art" / f"tezos-{CONTRACT}-2.png"
    assert imported.read_bytes() == other and nft_attrs(imported)["owner"] == ALICE
    assert "/art/3" not in web.hits                              # Bob's token not fetched
