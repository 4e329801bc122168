"""gffs-admin nft link/refresh against a real EVM (eth-tester + py-evm) over HTTP JSON-RPC.

Our own ERC-721 and ERC-1155 contracts (contracts/*.sol, compiled with solcjs)
hold the tokens; metadata is served from a loopback web server, a data: URI
or an in-process Kubo node; the attributes are read back through the kernel.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NFT = "user.nft."


def write_config(path: Path, evm=None, extra: str = "", nft: str = "") -> Path:
    lines = ["[nft]", "timeout = 3", "max_metadata_kb = 64"]
    if evm is not None:
        lines.append(f'ethereum_rpc = "{evm.rpc_url}"')
    path.write_text("\n".join(lines) + "\n" + nft + "\n" + extra)
    return path


def admin(mount, config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gffs.cli.admin", "--config", str(config),
                           "--data-dir", str(mount.data_dir), "nft", *args],
                          capture_output=True, text=True, timeout=timeout)


def nft_attrs(path: Path) -> dict[str, str]:
    return {n[len(NFT):]: os.getxattr(path, n).decode() for n in os.listxattr(path)
            if n.startswith(NFT)}


def image_file(mount, rel: str, seed: int = 1) -> Path:
    from io import BytesIO
    from PIL import Image
    buf = BytesIO()
    Image.new("RGB", (32, 24), (seed * 40 % 256, 90, 200)).save(buf, "PNG")
    path = mount.path / rel
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def metadata(name: str, image: str, **extra) -> dict:
    return {"name": name, "description": f"{name}, a test token", "image": image,
            "attributes": [{"trait_type": "colour", "value": "blue"}], **extra}


@pytest.fixture
def chain_mount(mount_factory, evm, web, tmp_path):
    config = write_config(tmp_path / "gffs.toml", evm)
    return mount_factory(config=config), config


def test_link_erc721_then_refresh_sees_transfer(chain_mount, evm, web):
    m, config = chain_mount
    alice, bob = evm.accounts[1], evm.accounts[2]
    nft = evm.deploy("GfNft721", "Gf test", "GFT")
    media = "ipfs://bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    uri = web.put("/meta/42.json", metadata("Sunset #42", media))
    evm.send(nft.functions.mint(alice, 42, uri))
    img = image_file(m, "art/sunset.png")

    res = admin(m, config, "link", str(img), "--chain", "ethereum", "--contract", nft.address,
                "--token", "42")
    assert res.returncode == 0, res.stderr
    attrs = nft_attrs(img)
    assert attrs["chain"] == "ethereum" and attrs["standard"] == "erc721"
    assert attrs["contract"].lower() == nft.address.lower() and attrs["token_id"] == "42"
    assert attrs["owner"].lower() == alice.lower()
    assert attrs["token_uri"] == uri and attrs["name"] == "Sunset #42"
    assert attrs["media_uri"] == media
    assert json.loads(attrs["attributes"]) == [{"trait_type": "colour", "value": "blue"}]

    evm.send(nft.functions.transferFrom(alice, bob, 42), sender=alice)
    assert nft_attrs(img)["owner"].lower() == alice.lower()      # nothing changes by itself
    res = admin(m, config, "refresh", str(m.path / "art"))
    assert res.returncode == 0, res.stderr
    assert "refreshed" in res.stdout
    assert nft_attrs(img)["owner"].lower() == bob.lower()

    m.remount()                                                  # stored, not cached
    assert nft_attrs(img)["owner"].lower() == bob.lower()


def test_link_erc1155_owner_follows_holders(chain_mount, evm, web):
    m, config = chain_mount
    alice, bob = evm.accounts[1], evm.accounts[2]
    nft = evm.deploy("GfNft1155", web.url("/1155/{id}.json"))
    web.put(f"/1155/{7:064x}.json", metadata("Edition 7", "https://example.invalid/7.png"))
    evm.send(nft.functions.mint(alice, 7, 3))
    img = image_file(m, "art/edition.png")

    res = admin(m, config, "link", str(img), "--chain", "ethereum", "--contract", nft.address,
                "--token", "7", "--json")
    assert res.returncode == 0, res.stderr
    attrs = nft_attrs(img)
    assert attrs["standard"] == "erc1155" and attrs["owner"].lower() == alice.lower()
    assert attrs["token_uri"].endswith(f"/1155/{7:064x}.json") and attrs["name"] == "Edition 7"

    evm.send(nft.functions.safeTransferFrom(alice, bob, 7, 3, b""), sender=alice)
    assert admin(m, config, "refresh", str(img)).returncode == 0
    assert nft_attrs(img)["owner"].lower() == bob.lower()

    # two holders now: the recorded one still holds some, so it stays
    evm.send(nft.functions.safeTransferFrom(bob, alice, 7, 1, b""), sender=bob)
    assert admin(m, config, "refresh", str(img)).returncode == 0
    assert nft_attrs(img)["owner"].lower() == bob.lower()


def test_link_data_uri_metadata(chain_mount, evm):
    m, config = chain_mount
    nft = evm.deploy("GfNft721", "Gf test", "GFT")
    meta = metadata("On-chain \u00e9t\u00e9", "data:image/svg+xml;base64,PHN2Zy8+",
                    description="x" * 20000)
    uri = "data:application/json;base64," + base64.b64encode(json.dumps(meta).encode()).decode()
    evm.send(nft.functions.mint(evm.accounts[3], 5, uri))
    img = image_file(m, "art/onchain.png")
    res = admin(m, config, "link", str(img), "--chain", "ethereum", "--contract", nft.address,
                "--token", "5", "--standard", "erc721")
    assert res.returncode == 0, res.stderr
    attrs = nft_attrs(img)
    assert attrs["name"] == "On-chain \u00e9t\u00e9"
    assert len(attrs["description"].encode()) == 16 * 1024          # cut to the limit
    assert "shortened" in res.stderr
    assert attrs["media_uri"] == "data:image/svg+xml;base64,PHN2Zy8+"
    assert "token_uri" not in attrs and "too long to keep" in res.stderr   # 27 KB > 4 KiB


def test_link_ipfs_metadata_through_kubo(mount_factory, evm, kubo, tmp_path):
    import requests
    meta = metadata("From IPFS", "ipfs://QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG")
    cid = requests.post(f"{kubo.url}/api/v0/add", params={"cid-version": "0"},
                        files={"file": ("m.json", json.dumps(meta).encode())},
                        timeout=30).json()["Hash"]
    extra = (f'[backends.local]\ntype = "local"\npath = "{tmp_path / "chunks"}"\n'
             f'[backends.ipfs]\ntype = "ipfs"\napi = "{kubo.multiaddr}"\nmfs_dir = "/nfttest"\n'
             '[placement]\nbackends = ["local"]\n')
    config = write_config(tmp_path / "gffs.toml", evm, extra)
    m = mount_factory(config=config)
    nft = evm.deploy("GfNft721", "Gf test", "GFT")
    evm.send(nft.functions.mint(evm.accounts[1], 1, f"ipfs://{cid}"))
    img = image_file(m, "art/ipfs.png")
    res = admin(m, config, "link", str(img), "--chain", "ethereum", "--contract", nft.address,
                "--token", "1")
    assert res.returncode == 0, res.stderr
    assert nft_attrs(img)["name"] == "From IPFS"
    assert any(r.startswith("cat") for r in kubo.requests)


def test_link_refuses_what_is_not_a_token(chain_mount, evm, web, tmp_path):
    m, config = chain_mount
    img = image_file(m, "art/x.png")
    nft = evm.deploy("GfNft721", "Gf test", "GFT")
    cases = [
        (["--contract", nft.address, "--token", "999"], "no such token"),
        (["--contract", evm.accounts[4], "--token", "1"], "no contract at"),
        (["--contract", "0x1234", "--token", "1"], "contract"),
        (["--contract", nft.address, "--token", "-1"], "token_id"),
    ]
    for extra, message in cases:
        res = admin(m, config, "link", str(img), "--chain", "ethereum", *extra)
        assert res.returncode in (1, 2) and message in res.stderr, (extra, res.stderr)
    assert nft_attrs(img) == {}
    outside = tmp_path / "plain.png"
    outside.write_bytes(b"x")
    res = admin(m, config, "link", str(outside), "--chain", "ethereum", "--contract",
                nft.address, "--token", "1")
    assert res.returncode == 1 and "not on a gffs mount" in res.stderr


HOSTILE = {
    "oversized": (lambda web: web.put("/big.json", {"name": "x" * 100_000}), "limit"),
    "file scheme": (lambda web: "file:///etc/passwd", "refusing to follow a file: URI"),
    "javascript scheme": (lambda web: "javascript:alert(1)", "refusing to follow a javascript: URI"),
    "bad json": (lambda web: web.put("/bad.json", b"{\"name\": "), "not valid JSON"),
    "not an object": (lambda web: web.put("/list.json", [1, 2, 3]), "where an object was expected"),
    "too deep": (lambda web: web.put("/deep.json", "{\"a\":" * 40 + "1" + "}" * 40),
                 "nested deeper"),
    "media scheme": (lambda web: web.put("/media.json", metadata("m", "file:///etc/shadow")),
                     "file: URIs are refused"),
    "http error": (lambda web: web.url("/missing.json"), "answered HTTP 404"),
    "slow server": (lambda web: web.put("/slow.json", b" " * 1000 + b"{}", drip=0.05),
                    "longer than 3 s"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_metadata_changes_nothing(chain_mount, evm, web, case):
    m, config = chain_mount
    make_uri, message = HOSTILE[case]
    nft = evm.deploy("GfNft721", "Gf test", "GFT")
    good = web.put("/ok.json", metadata("Good", "https://a.example/1.png"))
    evm.send(nft.functions.mint(evm.accounts[1], 1, good))
    img = image_file(m, "art/h.png")
    args = ["link", str(img), "--chain", "ethereum", "--contract", nft.address, "--token", "1"]
    assert admin(m, config, *args).returncode == 0
    before = nft_attrs(img)
    assert before["name"] == "Good"

    evm.send(nft.functions.setTokenURI(1, make_uri(web)))
    evm.send(nft.functions.transferFrom(evm.accounts[1], evm.accounts[2], 1),
             sender=evm.accounts[1])
    res = admin(m, config, *args)
    assert res.returncode == 1
    assert message in res.stderr and "nothing changed" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1                 # one clear line
    assert nft_attrs(img) == before                                   # not even the owner
