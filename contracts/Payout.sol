// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// Sends ETH onward by internal calls, as exchanges' withdrawal contracts and smart wallets
/// do: the test chain's source of internal native transfers (seen only in traces).
contract Payout {
    /// Forward everything sent to `to`.
    function pay(address payable to) external payable {
        (bool ok, ) = to.call{value: msg.value}("");
        require(ok, "send failed");
    }

    /// Several payouts in one transaction.
    function batch(address payable[] calldata tos, uint256[] calldata amounts) external payable {
        require(tos.length == amounts.length, "lengths differ");
        for (uint256 i = 0; i < tos.length; i++) {
            (bool ok, ) = tos[i].call{value: amounts[i]}("");
            require(ok, "send failed");
        }
    }

    /// Send, then revert the whole call: nothing arrives.
    function payThenRevert(address payable to) external payable {
        (bool ok, ) = to.call{value: msg.value}("");
        require(ok, "send failed");
        revert("changed my mind");
    }

    /// A payout two calls deep: this contract asks `inner` to pay.
    function nested(Payout inner, address payable to) external payable {
        inner.pay{value: msg.value}(to);
    }

    /// The inner call sends and reverts, the transaction succeeds: nothing arrives (the
    /// value stays here).
    function tryPay(Payout inner, address payable to) external payable {
        try inner.payThenRevert{value: msg.value}(to) {} catch {}
    }
}
