"""gffs-admin nft scan: tokens an owner holds are matched to stored files by content id."""

from __future__ import annotations

import json
import os

from gffs.config import load_config
from gffs.maintenance.control import commit_mounted
from gffs.nft.scan import StoreFiles, store_mount
from test_nft_evm import admin, image_file, metadata, nft_attrs, write_config


def test_content_ids_of_fetched_bytes_find_stored_files(mounted, tmp_path):
    """The content id scan computes from bytes is the one the store recorded at close."""
    flow = mounted.path / "f"
    flow.mkdir()
    bodies = {"empty": b"", "small.bin": b"abc", "holes.bin": b"x" * 5 + bytes(3 << 20) + b"y",
              "exact.bin": os.urandom(1 << 20), "multi.bin": os.urandom((2 << 20) + 12345)}
    for name, body in bodies.items():
        (flow / name).write_bytes(body)
    with open(flow / "sparse.bin", "wb") as f:          # zero blocks never written: holes
        f.seek(3 << 20)
        f.write(b"z")
    bodies["sparse.bin"] = bytes(3 << 20) + b"z"
    os.link(flow / "small.bin", flow / "again.bin")
    cfg = load_config(None, str(mounted.data_dir))
    files = StoreFiles(cfg, store_mount(cfg), commit_mounted)
    for name, body in bodies.items():
        found = files.paths(body)
        if name == "small.bin":
            assert [os.path.basename(p) for p in found] in (["small.bin"], ["again.bin"])
        else:
            assert found == [str(flow / name)], name
    assert files.paths(b"abd") == []


def test_scan_links_owned_tokens_and_imports_missing_media(mount_factory, evm, web, tmp_path):
    config = write_config(tmp_path / "gffs.toml", evm)
    m = mount_factory(config=config)
    alice, bob = evm.accounts[1], evm.accounts[2]
    stored = image_file(m, "photos/stored.png", seed=1)
    elsewhere = image_file(m, "other/not-a-token.png", seed=9)
    missing = image_file(m, "tmp/missing.png", seed=2).read_bytes()
    (m.path / "tmp" / "missing.png").unlink()

    n721 = evm.deploy("GfNft721", "Gf test", "GFT")
    n1155 = evm.deploy("GfNft1155", web.url("/e/{id}.json"))
    web.put("/media/stored.png", stored.read_bytes())
    web.put("/media/missing.png", missing)
    evm.send(n721.functions.mint(alice, 1, web.put("/m/1.json",
                                                   metadata("Stored", web.url("/media/stored.png")))))
    evm.send(n721.functions.mint(alice, 2, web.put("/m/2.json",
                                                   metadata("Missing", web.url("/media/missing.png")))))
    evm.send(n721.functions.mint(bob, 3, web.put("/m/3.json",
                                                 metadata("Bob's", web.url("/media/stored.png")))))
    evm.send(n721.functions.mint(alice, 4, web.put("/m/4.json", metadata("Broken", "file:///x"))))
    evm.send(n721.functions.transferFrom(alice, bob, 4), sender=alice)   # no longer alice's
    web.put(f"/e/{9:064x}.json", metadata("Edition", web.url("/media/stored.png")))
    evm.send(n1155.functions.mint(alice, 9, 2))

    res = admin(m, config, "scan", "--owner", alice, "--json")
    assert res.returncode == 0, res.stderr
    by_token = {r["token"].split(":", 2)[1:][0].lower() + ":" + r["token"].rsplit(":", 1)[1]: r
                for r in json.loads(res.stdout)}
    assert set(by_token) == {f"{n721.address.lower()}:1", f"{n721.address.lower()}:2",
                             f"{n1155.address.lower()}:9"}
    assert by_token[f"{n721.address.lower()}:1"]["status"] == "linked"
    assert by_token[f"{n721.address.lower()}:2"]["status"] == "missing"
    # token 1 (ERC-721) linked the stored file first; the edition with the same media
    # does not take it over
    assert by_token[f"{n1155.address.lower()}:9"]["status"] == "skipped"
    attrs = nft_attrs(stored)
    assert attrs["token_id"] == "1" and attrs["owner"].lower() == alice.lower()
    assert attrs["name"] == "Stored"
    assert nft_attrs(elsewhere) == {}
    assert not (m.path / "nfts").exists()

    res = admin(m, config, "scan", "--owner", alice, "--contract", n721.address,
                "--import-to", "nfts")
    assert res.returncode == 0, res.stderr
    assert "1 linked, 1 imported" in res.stdout
    imported = list((m.path / "nfts").iterdir())
    assert [p.name for p in imported] == [f"ethereum-{n721.address}-2.png"]
    assert imported[0].read_bytes() == missing
    attrs = nft_attrs(imported[0])
    assert attrs["token_id"] == "2" and attrs["name"] == "Missing"
    assert attrs["owner"].lower() == alice.lower()

    res = admin(m, config, "scan", "--owner", alice, "--import-to", "nfts")  # idempotent
    assert res.returncode == 0, res.stderr
    assert len(list((m.path / "nfts").iterdir())) == 1


def test_scan_needs_a_mounted_store(evm, tmp_path):
    import subprocess
    import sys
    config = write_config(tmp_path / "gffs.toml", evm)
    res = subprocess.run([sys.executable, "-m", "gffs.cli.admin", "--config", str(config),
                          "--data-dir", str(tmp_path / "nostore"), "nft", "scan", "--owner",
                          evm.accounts[1]], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "is not mounted" in res.stderr
    res = subprocess.run([sys.executable, "-m", "gffs.cli.admin", "--config", str(config),
                          "nft", "scan", "--owner", "0xnothex"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "owner" in res.stderr

