"""user.nft.* validation: through the Filesystem layer and through a real mount."""

from __future__ import annotations

import errno
import os

import pytest

from gffs.nft.validate import InvalidNftValue, validate

ADDR = "0x" + "ab" * 20
KT1 = "KT1" + "A" * 33


@pytest.mark.parametrize("key,value", [
    ("chain", "ethereum"), ("chain", "tezos"), ("contract", ADDR), ("contract", KT1),
    ("owner", "tz1" + "b" * 33), ("token_id", "0"), ("token_id", str(2 ** 256 - 1)),
    ("standard", "erc1155"), ("token_uri", "ipfs://bafy/1.json"),
    ("media_uri", "https://example.org/a.png"), ("media_uri", "data:image/png;base64,AAAA"),
    ("name", "Sunset #42"), ("description", "a long text\nwith lines"),
    ("attributes", '[{"trait_type": "sky", "value": "red"}]'),
])
def test_good_values(key, value):
    validate(key, value.encode(), {})


@pytest.mark.parametrize("key,value", [
    ("chain", "bitcoin"), ("chain", "Ethereum"), ("contract", "0x123"), ("contract", "tz1" + "b" * 33),
    ("contract", "0x" + "g" * 40), ("owner", "nobody"), ("token_id", "-1"), ("token_id", "01"),
    ("token_id", str(2 ** 256)), ("token_id", "1e3"), ("standard", "erc20"),
    ("token_uri", "file:///etc/passwd"), ("token_uri", "javascript:alert(1)"),
    ("media_uri", "https://a b"), ("name", "x" * 257), ("name", "a\x00b"),
    ("attributes", "{not json"), ("attributes", '{"a": 1}'), ("colour", "red"),
])
def test_bad_values(key, value):
    with pytest.raises(InvalidNftValue):
        validate(key, value.encode(), {})


def test_chain_and_addresses_must_agree():
    with pytest.raises(InvalidNftValue):
        validate("contract", KT1.encode(), {"chain": "ethereum"})
    with pytest.raises(InvalidNftValue):
        validate("chain", b"tezos", {"contract": ADDR})
    validate("chain", b"tezos", {"contract": KT1})


def test_setfattr_through_the_kernel(mounted):
    p = mounted.path / "nfts"
    p.mkdir()
    f = p / "token.png"
    f.write_bytes(b"png")
    os.setxattr(f, "user.nft.chain", b"ethereum")
    os.setxattr(f, "user.nft.contract", ADDR.encode())
    os.setxattr(f, "user.nft.token_id", b"42")
    for name, bad in [("user.nft.token_id", b"forty-two"), ("user.nft.contract", KT1.encode()),
                      ("user.nft.chain", b"tezos"), ("user.nft.whatever", b"x")]:
        with pytest.raises(OSError) as e:
            os.setxattr(f, name, bad)
        assert e.value.errno == errno.EINVAL
    assert os.getxattr(f, "user.nft.token_id") == b"42"        # nothing changed
    assert os.getxattr(f, "user.nft.chain") == b"ethereum"
    mounted.remount()
    assert os.getxattr(f, "user.nft.contract") == ADDR.encode()
