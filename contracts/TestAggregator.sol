// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @title TestAggregator: a Chainlink AggregatorV3Interface whose rounds the test sets,
/// including the bad ones (stale, non-positive, unanswered) and a feed that reverts.
contract TestAggregator {
    uint8 public decimals;
    string public description;
    uint256 public constant version = 4;
    bool public broken;

    uint80 private _roundId;
    int256 private _answer;
    uint256 private _startedAt;
    uint256 private _updatedAt;
    uint80 private _answeredInRound;

    constructor(uint8 decimals_, string memory description_) {
        decimals = decimals_;
        description = description_;
    }

    /// Set the latest round; `updatedAt` 0 means "now" (the block's timestamp).
    function setRound(uint80 roundId, int256 answer, uint256 updatedAt, uint80 answeredInRound)
        external
    {
        uint256 stamp = updatedAt == 0 ? block.timestamp : updatedAt;
        _roundId = roundId;
        _answer = answer;
        _startedAt = stamp;
        _updatedAt = stamp;
        _answeredInRound = answeredInRound;
    }

    function setBroken(bool value) external {
        broken = value;
    }

    function latestRoundData()
        external
        view
        returns (uint80 roundId, int256 answer, uint256 startedAt, uint256 updatedAt,
                 uint80 answeredInRound)
    {
        require(!broken, "TestAggregator: broken");
        return (_roundId, _answer, _startedAt, _updatedAt, _answeredInRound);
    }
}
