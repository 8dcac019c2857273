// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @title Reverter: refuses every payment and call, so a native transfer to it
/// is mined with receipt status 0.
contract Reverter {
    receive() external payable {
        revert("Reverter: no payments");
    }

    fallback() external payable {
        revert("Reverter: no calls");
    }
}
