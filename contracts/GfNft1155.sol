// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// A minimal ERC-1155 for gffs' tests: one URI template with the `{id}` placeholder
/// for every token, balances per (holder, id), single and batch transfers.
contract GfNft1155 {
    event TransferSingle(address indexed operator, address indexed from, address indexed to,
                         uint256 id, uint256 value);
    event TransferBatch(address indexed operator, address indexed from, address indexed to,
                        uint256[] ids, uint256[] values);
    event ApprovalForAll(address indexed account, address indexed operator, bool approved);
    event URI(string value, uint256 indexed id);

    address public minter;
    string private template;
    mapping(uint256 => mapping(address => uint256)) private balances;
    mapping(address => mapping(address => bool)) private operators;

    constructor(string memory uriTemplate) {
        minter = msg.sender;
        template = uriTemplate;
    }

    function supportsInterface(bytes4 id) external pure returns (bool) {
        return id == 0x01ffc9a7 || id == 0xd9b67a26 || id == 0x0e89341c;
    }

    function uri(uint256) external view returns (string memory) {
        return template;
    }

    function balanceOf(address account, uint256 id) public view returns (uint256) {
        require(account != address(0), "zero address");
        return balances[id][account];
    }

    function balanceOfBatch(address[] calldata accounts, uint256[] calldata ids)
            external view returns (uint256[] memory out) {
        require(accounts.length == ids.length, "length mismatch");
        out = new uint256[](accounts.length);
        for (uint256 i = 0; i < accounts.length; i++) {
            out[i] = balanceOf(accounts[i], ids[i]);
        }
    }

    function setApprovalForAll(address operator, bool approved) external {
        operators[msg.sender][operator] = approved;
        emit ApprovalForAll(msg.sender, operator, approved);
    }

    function isApprovedForAll(address account, address operator) public view returns (bool) {
        return operators[account][operator];
    }

    function mint(address to, uint256 id, uint256 amount) external {
        require(msg.sender == minter, "only the minter mints");
        require(to != address(0), "zero address");
        balances[id][to] += amount;
        emit TransferSingle(msg.sender, address(0), to, id, amount);
    }

    function safeTransferFrom(address from, address to, uint256 id, uint256 amount,
                              bytes calldata) external {
        require(from == msg.sender || isApprovedForAll(from, msg.sender), "not allowed");
        require(to != address(0) && to.code.length == 0, "only plain accounts receive here");
        require(balances[id][from] >= amount, "balance too low");
        balances[id][from] -= amount;
        balances[id][to] += amount;
        emit TransferSingle(msg.sender, from, to, id, amount);
    }

    function safeBatchTransferFrom(address from, address to, uint256[] calldata ids,
                                   uint256[] calldata amounts, bytes calldata) external {
        require(from == msg.sender || isApprovedForAll(from, msg.sender), "not allowed");
        require(to != address(0) && to.code.length == 0, "only plain accounts receive here");
        require(ids.length == amounts.length, "length mismatch");
        for (uint256 i = 0; i < ids.length; i++) {
            require(balances[ids[i]][from] >= amounts[i], "balance too low");
            balances[ids[i]][from] -= amounts[i];
            balances[ids[i]][to] += amounts[i];
        }
        emit TransferBatch(msg.sender, from, to, ids, amounts);
    }
}
