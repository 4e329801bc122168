"""Fetching untrusted token URIs: schemes, limits, deadlines, JSON sanity (loopback only)."""

from __future__ import annotations

import hashlib
import time

import pytest

from gffs.index.images import content_id_from_blocks, content_id_of_bytes
from gffs.nft.fetch import Fetcher, NftError, data_uri_bytes, parse_json_object
from gffs.nft.metadata import EVM_MEDIA_FIELDS, clean_text, values_from_metadata


def test_data_uris_decode_within_limits():
    assert data_uri_bytes("data:application/json;base64,eyJhIjoxfQ==", 100, "m") == b'{"a":1}'
    assert data_uri_bytes("data:,%7B%22a%22%3A1%7D", 100, "m") == b'{"a":1}'
    with pytest.raises(NftError, match="limit"):
        data_uri_bytes("data:," + "a" * 101, 100, "m")
    with pytest.raises(NftError, match="broken base64"):
        data_uri_bytes("data:;base64,@@@", 100, "m")
    with pytest.raises(NftError, match="no comma"):
        data_uri_bytes("data:text/plain", 100, "m")


@pytest.mark.parametrize("uri, scheme", [("file:///etc/passwd", "file"),
                                         ("javascript:alert(1)", "javascript"),
                                         ("ftp://x/y", "ftp"), ("gopher://x", "gopher")])
def test_other_schemes_are_refused(uri, scheme):
    with pytest.raises(NftError, match=f"refusing to follow a {scheme}: URI"):
        Fetcher().fetch(uri, 1000, "token metadata")


def test_json_sanity():
    assert parse_json_object(b'\xef\xbb\xbf{"name": "x"}', "m") == {"name": "x"}
    for raw, message in [(b"[1]", "object"), (b"{", "not valid JSON"), (b"\xff", "UTF-8"),
                         (b'{"a": NaN}', "not valid JSON"),
                         (b'{"a":' * 33 + b"1" + b"}" * 33, "nested deeper"),
                         (b"[" * 5000 + b"]" * 5000, "nested")]:
        with pytest.raises(NftError, match=message):
            parse_json_object(raw, "m")


def test_http_limits_and_deadline(web):
    f = Fetcher(timeout=1.0)
    assert f.fetch(web.put("/a", b"hello"), 10, "m") == b"hello"
    with pytest.raises(NftError, match="over the limit"):
        f.fetch(web.put("/big", b"x" * 11), 10, "m")
    with pytest.raises(NftError, match="HTTP 404"):
        f.fetch(web.url("/nothing"), 10, "m")
    start = time.monotonic()
    with pytest.raises(NftError, match="longer than 1 s"):
        f.fetch(web.put("/drip", b"y" * 1000, drip=0.05), 10_000, "m")
    assert time.monotonic() - start < 5


def test_metadata_values_are_cleaned_and_cut():
    notes: list[str] = []
    values = values_from_metadata({"name": "a\x00b\x07c" + "\u00e9" * 200, "description": 5,
                                   "image": "ipfs://bafy", "attributes": [{"a": 1}, "junk"]},
                                  EVM_MEDIA_FIELDS, notes)
    assert values["name"].startswith("abc") and len(values["name"].encode()) <= 256
    assert "description" not in values and values["media_uri"] == "ipfs://bafy"
    assert values["attributes"] == '[{"a":1}]'
    assert any("not objects" in n for n in notes) and any("not text" in n for n in notes)
    assert clean_text("\u00e9\u00e9", 3) == "\u00e9"              # never half a character
    with pytest.raises(NftError, match="javascript: URIs are refused"):
        values_from_metadata({"image": "javascript:alert(1)"}, EVM_MEDIA_FIELDS, [])


def test_content_id_of_bytes_matches_block_hashing():
    bs = 64 * 1024
    data = b"a" * bs + bytes(bs) + b"b" * 100       # second block is all zeros: a hole
    blocks = [(0, hashlib.sha256(b"a" * bs).digest()), (2, hashlib.sha256(b"b" * 100).digest())]
    assert content_id_of_bytes(data, bs) == content_id_from_blocks(len(data), blocks)
    assert content_id_of_bytes(b"", bs) == content_id_from_blocks(0, [])


@pytest.mark.parametrize("options, headers, auth", [
    ('auth_token = "s3cret"', {"Authorization": "Bearer s3cret"}, None),
    ('username = "ann"\npassword = "pw"', None, ("ann", "pw")),
    ("", None, None),
])
def test_ipfs_fetches_carry_the_backends_credentials(tmp_path, options, headers, auth):
    """ipfs:// URIs are read from the configured node with the same credentials its RPC uses."""
    from gffs.config import load_config
    cfg_file = tmp_path / "gffs.toml"
    cfg_file.write_text(f'[backends.node]\ntype = "ipfs"\napi = "http://127.0.0.1:5001"\n{options}\n\n'
                        f'[nft]\nipfs_backend = "node"\n')
    cfg_file.chmod(0o600)
    f = Fetcher.from_config(load_config(str(cfg_file), str(tmp_path / "data")))
    assert f.ipfs_api.startswith("http://127.0.0.1:5001")
    assert (f.ipfs_headers, f.ipfs_auth) == (headers, auth)
