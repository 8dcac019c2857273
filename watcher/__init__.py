"""payment-watcher: a self-hosted, watch-only payment daemon for EVM chains."""

__version__ = "0.1.0"

#: The environment variable naming the configuration file (here: light to import).
CONFIG_ENV = "PAYMENT_WATCHER_CONFIG"
