"""payment-watcher: a self-hosted, watch-only payment daemon for EVM chains."""

__version__ = "0.1.0"
