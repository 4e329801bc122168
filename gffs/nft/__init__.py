"""NFT / web3 metadata carried by images (user.nft.* xattrs)."""
