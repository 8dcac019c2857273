"""The configuration: one `Settings` object, validated once at start-up and passed down.

Sources, highest priority first: keyword arguments, environment variables
`PAYMENT_WATCHER_<SECTION>__<KEY>` (deep-merged over the file; lists as JSON), the TOML file.
Secrets may also come from `*_file` keys or systemd credentials (`$CREDENTIALS_DIRECTORY`
files `api_keys` and `callbacks_secret`, used when the key and its `*_file` are unset).

A `[networks.NAME]` table overrides the shipped `networks/NAME.toml` field by field (its
`tokens` merge with the shipped ones by symbol), or defines a network in full.

`load_settings()` turns every problem into `ConfigError`, one line per problem, each
starting with the dotted key path. Secret values never appear in a message.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from watcher import CONFIG_ENV
from watcher import networks as shipped
from watcher.amounts import default_step, parse_amount, parse_fraction
from watcher.errors import AmountError, ConfigError
from watcher.models import Asset
from watcher.storage.base import is_postgres_url
from watcher.timeutil import parse_duration

if TYPE_CHECKING:
    from watcher.derivation import Deriver

ENV_PREFIX = "PAYMENT_WATCHER_"
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
API_KEYS_CREDENTIAL = "api_keys"
CALLBACKS_SECRET_CREDENTIAL = "callbacks_secret"
DATABASE_PASSWORD_CREDENTIAL = "database_password"
DEFAULT_DATABASE = "/var/lib/payment-watcher/watcher.db"
#: `max_lag_blocks` defaults to about this much chain time, and at least MIN_LAG_BLOCKS.
LAG_SECONDS = 120
MIN_LAG_BLOCKS = 10
MIN_POLL_INTERVAL = 0.25

T = TypeVar("T")
_toml_path: ContextVar[Path | None] = ContextVar("payment_watcher_toml_path", default=None)
_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}\Z")
_NETWORK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}\Z")
_SYMBOL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,19}\Z")


# ---------------------------------------------------------------- field types


def checksum_address(value: object) -> str:
    """`0x` + 40 hex digits; mixed case must be a valid EIP-55 checksum. Returns the
    checksummed form; ValueError "not an EVM address" or "bad checksum"."""
    if not isinstance(value, str) or not _HEX_ADDRESS.match(value):
        raise ValueError("not an EVM address")
    from watcher.addresses import checksum_address as eip55  # only when used

    checked = eip55(value)
    body = value[2:]
    if body != body.lower() and body != body.upper() and checked != value:
        raise ValueError("bad checksum")
    return checked


def check_url(value: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """`value` if it is an absolute URL with a host and one of `schemes`, else ValueError.
    The string is kept as given (no trailing slash added)."""
    try:
        parts = urlsplit(value)
        ok = parts.scheme.lower() in schemes and bool(parts.hostname)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except (ValueError, AttributeError, TypeError):
        ok = False
    if not ok or any(c.isspace() for c in value):
        wanted = " or ".join(f"{s}://" for s in schemes)
        article = "an" if schemes[0] == "http" else "a"
        raise ValueError(f"must be {article} {wanted} URL")
    return value


def _duration(value: object) -> int:
    return parse_duration(value)


def _seconds(value: object) -> float:
    """A positive number of seconds: a number, or a duration string (`"10s"`, `"2.5"`)."""
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return float(parse_duration(value))
    raise ValueError("must be a number of seconds")


def _fraction(value: object) -> Fraction:
    if isinstance(value, Fraction):
        return value
    return parse_fraction(value)


def _one_or_many(value: object) -> object:
    """`rpc = "https://..."` is accepted as a one-element list."""
    return [value] if isinstance(value, str) else value


def _no_duplicates(values: list[str]) -> list[str]:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{redact_url(v)} is listed twice")
        seen.add(v)
    return values


Address = Annotated[str, BeforeValidator(checksum_address)]
HttpUrlStr = Annotated[str, AfterValidator(check_url)]
WsUrlStr = Annotated[str, AfterValidator(lambda v: check_url(v, ("ws", "wss")))]
Duration = Annotated[int, BeforeValidator(_duration)]
Seconds = Annotated[float, BeforeValidator(_seconds)]
UrlList = Annotated[list[HttpUrlStr], BeforeValidator(_one_or_many), AfterValidator(_no_duplicates)]
WsUrlList = Annotated[list[WsUrlStr], BeforeValidator(_one_or_many), AfterValidator(_no_duplicates)]


def redact_url(url: str) -> str:
    """An RPC or callback URL safe to print: scheme, host and port only (providers put API
    keys in the path, the query or the user part)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    rest = "/…" if parts.path.strip("/") or parts.query or parts.username else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def _read_secret(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"cannot read {path}: not UTF-8 text") from None


def _parse_keys(text: str, where: Path) -> list[SecretStr]:
    """One API key per line; blank lines and `#` comments are skipped."""
    keys = [ln.strip() for ln in text.splitlines()]
    keys = [k for k in keys if k and not k.startswith("#")]
    if not keys:
        raise ValueError(f"{where} holds no API key")
    if any(any(c.isspace() for c in k) for k in keys):
        raise ValueError(f"{where}: an API key contains whitespace")
    return [SecretStr(k) for k in keys]


def _parse_secret(text: str, where: Path) -> SecretStr:
    secret = text.strip()
    if not secret:
        raise ValueError(f"{where} is empty")
    return SecretStr(secret)


def _credential(name: str) -> Path | None:
    """A systemd credential file (`LoadCredential=NAME:...`), if there is one. A blank one
    is none: the shipped unit's `SetCredential=callbacks_secret:\\n` is what systemd passes
    when the `LoadCredential=` file does not exist (callbacks not used)."""
    folder = os.environ.get(CREDENTIALS_ENV)
    if not folder:
        return None
    path = Path(folder) / name
    if not path.is_file():
        return None
    try:
        blank = not path.read_bytes().strip()
    except OSError:
        return path  # unreadable: reading it again reports why, naming the file
    return None if blank else path


def _fallback_secret(
    key: str, is_set: bool, file: Path | None, credential: str, parse: Callable[[str, Path], T]
) -> T | None:
    """The value of `key` from its `*_file` or, failing that, from the systemd credential,
    when `key` itself is unset. None when there is nothing to fill."""
    if is_set and file is not None:
        raise ValueError(f"set {key} or {key}_file, not both")
    if is_set:
        return None
    source = file or _credential(credential)
    return None if source is None else parse(_read_secret(source), source)


# ---------------------------------------------------------------- sections


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _valid_listen(value: str) -> str:
    _split_listen(value)
    return value


#: `"host:port"` (see `_split_listen`).
Listen = Annotated[str, AfterValidator(_valid_listen)]


class _Listening(_Section):
    """A section with a `listen` address; each subclass sets its default."""

    listen: Listen

    @property
    def host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]


class ApiConfig(_Listening):
    listen: Listen = "127.0.0.1:8080"
    api_keys: list[SecretStr] = Field(default_factory=list)
    api_keys_file: Path | None = None

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for k in keys:
            v = k.get_secret_value()
            if not v or any(c.isspace() for c in v):
                raise ValueError("an API key is empty or contains whitespace")
        return keys

    @field_validator("api_keys_file")
    @classmethod
    def _check_keys_file(cls, path: Path | None) -> Path | None:
        if path is not None:
            _parse_keys(_read_secret(path), path)
        return path

    @model_validator(mode="after")
    def _fill_keys(self) -> ApiConfig:
        found = _fallback_secret(
            "api_keys", bool(self.api_keys), self.api_keys_file, API_KEYS_CREDENTIAL, _parse_keys
        )
        if found is not None:
            self.api_keys = found
        return self


def _split_listen(value: str) -> tuple[str, int]:
    """`"127.0.0.1:8080"`, `"[::1]:8080"`, `"0.0.0.0:0"` (any free port)."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or any(c.isspace() for c in host) or not port.isdigit():
        raise ValueError('must be "host:port", e.g. "127.0.0.1:8080" or "[::1]:8080"')
    if int(port) > 65535:
        raise ValueError("port must be at most 65535")
    return host, int(port)


class CallbacksConfig(_Section):
    """`secret` is any string, or a Standard Webhooks secret `whsec_<base64 key>`: then the
    base64 part must decode to a key (it keys `webhook-signature`; see `watcher.signing`)."""

    url: HttpUrlStr | None = None
    secret: SecretStr | None = None
    secret_file: Path | None = None
    timeout: Annotated[Seconds, Field(gt=0, le=300)] = 10.0
    max_age: Annotated[Duration, Field(gt=0)] = 86400
    concurrency: Annotated[int, Field(ge=1, le=1000)] = 8

    @staticmethod
    def _check_webhook_key(secret: SecretStr, where: str) -> None:
        """ValueError naming `callbacks.secret` (never quoting it) for a bad `whsec_` form."""
        from watcher.signing import webhook_key

        try:
            webhook_key(secret.get_secret_value())
        except ValueError as e:
            raise ValueError(f"{where}{e}") from None

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None and not secret.get_secret_value().strip():
            raise ValueError("must not be empty")
        if secret is not None:
            cls._check_webhook_key(secret, "")
        return secret

    @field_validator("secret_file")
    @classmethod
    def _check_secret_file(cls, path: Path | None) -> Path | None:
        if path is not None:
            secret = _parse_secret(_read_secret(path), path)
            cls._check_webhook_key(secret, f"{path}: callbacks.secret ")
        return path

    @model_validator(mode="after")
    def _fill_secret(self) -> CallbacksConfig:
        found = _fallback_secret(
            "secret",
            self.secret is not None,
            self.secret_file,
            CALLBACKS_SECRET_CREDENTIAL,
            _parse_secret,
        )
        if found is not None:
            where = self.secret_file or _credential(CALLBACKS_SECRET_CREDENTIAL)
            self._check_webhook_key(found, f"{where}: callbacks.secret ")
            self.secret = found
        return self


class InvoicesConfig(_Section):
    default_ttl: Annotated[Duration, Field(gt=0)] = 86400
    late_payment_window: Duration = 86400
    underpayment_tolerance: Annotated[Fraction, BeforeValidator(_fraction)] = Fraction(0)


class MetricsConfig(_Section):
    require_auth: bool = False


#: A CSP `frame-ancestors` source: 'self', or a scheme + host (with `*.` and :port allowed).
_FRAME_SOURCE = re.compile(r"'self'\Z|https?://(\*\.)?[A-Za-z0-9.-]+(:\d{1,5})?\Z")


class CheckoutConfig(_Listening):
    """The public checkout listener (contract section 8)."""

    enabled: bool = False
    listen: Listen = "127.0.0.1:8081"
    #: What invoice `url`s start with; default `http://<listen>` (set it when a reverse
    #: proxy serves the page).
    public_url: HttpUrlStr | None = None
    #: Catalogues offered, the first is the default; Accept-Language or `?lang=` picks.
    languages: list[str] = Field(default_factory=lambda: ["en", "de"], min_length=1)
    #: Who may embed the page in a frame (CSP frame-ancestors): none by default.
    frame_ancestors: list[str] = Field(default_factory=list)
    #: Seconds the paid page waits before it sends the customer to `redirectUrl`.
    redirect_delay: Annotated[int, Field(ge=0, le=60)] = 5

    @field_validator("languages")
    @classmethod
    def _check_languages(cls, value: list[str]) -> list[str]:
        from watcher.web.i18n import LANGUAGES

        for lang in value:
            if lang not in LANGUAGES:
                raise ValueError(
                    f"no catalogue for language {lang!r} (shipped: {', '.join(LANGUAGES)})"
                )
        if len(set(value)) != len(value):
            raise ValueError("a language is listed twice")
        return value

    @field_validator("frame_ancestors")
    @classmethod
    def _check_frame_ancestors(cls, value: list[str]) -> list[str]:
        for src in value:
            if not _FRAME_SOURCE.match(src):
                raise ValueError(
                    f"{src!r} is not a frame-ancestors source: use 'self' or an origin "
                    'such as "https://shop.example"'
                )
        return value

    @property
    def base_url(self) -> str:
        """The public URL, or `http://<listen>` when none is set."""
        if self.public_url is not None:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class DashboardConfig(_Section):
    """The merchant dashboard (contract section 12): `/dashboard` on the API listener, or
    on a listener of its own when `listen` is set. Signed in with an API key."""

    enabled: bool = True
    #: A listener of its own ("host:port"); unset: the API's listener serves it.
    listen: Listen | None = None
    #: Where the merchant's browser reaches it (behind a proxy): `https://` makes the
    #: session cookie `Secure` and adds HSTS; its origin is accepted on forms and sockets.
    public_url: HttpUrlStr | None = None
    #: A session unused for this long is over (sign in again).
    session_idle: Annotated[Duration, Field(ge=60, le=7 * 86400)] = 1800
    #: A session is over this long after sign-in, however busy.
    session_lifetime: Annotated[Duration, Field(ge=60, le=30 * 86400)] = 43200
    #: Failed sign-ins allowed per client IP address and minute; more: 429 until it passes.
    signin_attempts: Annotated[int, Field(ge=1, le=1000)] = 5

    @property
    def host(self) -> str | None:
        return None if self.listen is None else _split_listen(self.listen)[0]

    @property
    def port(self) -> int | None:
        return None if self.listen is None else _split_listen(self.listen)[1]

    @property
    def secure(self) -> bool:
        return self.public_url is not None and self.public_url.lower().startswith("https://")


_POSITIVE_DECIMAL = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)\Z")


class RateSourceConfig(_Section):
    """One source of a pair, tried in order: `{ fixed = "1" }`, `{ chainlink = "ethereum",
    feed = "0x..." }` (an AggregatorV3 read through that network's RPC) or `{ http = "URL",
    path = "a.b" }` (a JSON document and the dotted path of the number in it)."""

    fixed: str | None = None
    chainlink: str | None = None
    #: The feed's address; omitted: the network's `feeds` entry for the pair.
    feed: Address | None = None
    http: HttpUrlStr | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> RateSourceConfig:
        kinds = [k for k in ("fixed", "chainlink", "http") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError('give exactly one of fixed, chainlink or http')
        if self.fixed is not None and (
            not _POSITIVE_DECIMAL.match(self.fixed) or Fraction(self.fixed) <= 0
        ):
            raise ValueError('fixed must be a decimal string > 0, e.g. "1"')
        if self.feed is not None and self.chainlink is None:
            raise ValueError("feed goes with chainlink")
        if (self.http is None) != (self.path is None):
            raise ValueError('http and path go together (path: dotted keys, e.g. "ethereum.eur")')
        if self.path is not None and not all(self.path.split(".")):
            raise ValueError(f"path {self.path!r} has an empty key")
        return self

    @property
    def kind(self) -> str:
        return "fixed" if self.fixed is not None else "chainlink" if self.chainlink else "http"


class RatesConfig(_Section):
    """Rates for invoices priced in a currency (contract section 9)."""

    #: A rate whose source time is older than this is not used.
    max_age: Annotated[Duration, Field(gt=0)] = 3600
    #: Seconds between refreshes of every pair (creates never wait for a source).
    refresh_interval: Annotated[Duration, Field(gt=0, le=86400)] = 60
    #: "ASSET/CURRENCY" -> sources, the first that answers wins.
    pairs: dict[str, Annotated[list[RateSourceConfig], Field(min_length=1)]] = Field(
        default_factory=dict
    )

    @field_validator("pairs")
    @classmethod
    def _check_pairs(
        cls, pairs: dict[str, list[RateSourceConfig]]
    ) -> dict[str, list[RateSourceConfig]]:
        from watcher.rates import split_pair

        for name in pairs:
            base, quote = split_pair(name)
            if base == quote:
                raise ValueError(f"pair {name!r} prices a symbol in itself")
        return pairs


class ChannelsConfig(_Section):
    """Live WebSocket channels: `/pay/{id}/ws` (checkout) and `/v1/ws` (merchant)."""

    #: Open sockets per listener; one more is refused with 503 before the upgrade.
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 5000
    #: Subscriptions per merchant connection.
    max_subscriptions: Annotated[int, Field(ge=1, le=100_000)] = 100
    #: Messages waiting for one socket; a client that falls this far behind is cut off.
    queue_size: Annotated[int, Field(ge=1, le=100_000)] = 1024
    #: Seconds between pings; a client that does not answer within it is closed.
    heartbeat: Annotated[Seconds, Field(ge=1, le=3600)] = 25.0


#: The shortest retention age accepted: a bare number is seconds, and `unmatched_transfers
#: = 90` meaning 90 seconds would drop what a merchant still has to settle by hand.
MIN_RETENTION_AGE = 86400


def _retention_age(value: object) -> int:
    """A retention age: a duration of at least a day, or `"off"` / 0 (never pruned: 0)."""
    if isinstance(value, str) and value.strip().lower() == "off":
        return 0
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        if "negative" in str(exc):
            raise
        raise ValueError('must be a duration like "90d" (at least "1d"), or "off"') from None
    if seconds == 0:
        return 0
    if seconds < MIN_RETENTION_AGE:
        raise ValueError(f'must be at least "1d" ({MIN_RETENTION_AGE} s), or "off"')
    return seconds


#: Seconds, 0 when off.
RetentionAge = Annotated[int, BeforeValidator(_retention_age)]


class RetentionConfig(_Section):
    """Housekeeping rows pruned once older than an age (host clock against the rows' own
    times), `batch` rows per statement, each batch a short transaction of its own (see
    `watcher.retention`). "off" or 0 keeps a kind forever."""

    #: Callback attempts (each delivery keeps its state, attempt count and last error).
    attempts: RetentionAge = 90 * 86400
    #: Bodies of events all of whose deliveries are delivered, or that have none: the body
    #: becomes a stub; the event row, its id and name stay.
    event_bodies: RetentionAge = 180 * 86400
    #: Transfers that paid no invoice (kind unmatched); payments and late payments stay.
    unmatched_transfers: RetentionAge = 365 * 86400
    #: Rows per statement (and per transaction).
    batch: Annotated[int, Field(ge=1, le=100_000)] = 500
    #: How often the daemon prunes (a backlog is worked off in steps a few seconds apart).
    interval: Annotated[Duration, Field(ge=60, le=7 * 86400)] = 3600


class AddressesConfig(_Section):
    """Deposit addresses derived from the merchant's account xpub (contract section 10)."""

    #: Account-level extended public key (e.g. of m/44'/60'/0'); never a private key.
    xpub: SecretStr | None = None
    #: Below the key: non-hardened steps with one `{index}`.
    path: str = "0/{index}"
    #: First index handed out (keeps the wallet's own accounts apart).
    start_index: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0

    @field_validator("xpub")
    @classmethod
    def _check_xpub(cls, value: SecretStr | None) -> SecretStr | None:
        from watcher.derivation import DerivationError, parse_xpub

        if value is None:
            return None
        try:
            parse_xpub(value.get_secret_value())
        except DerivationError as exc:
            raise ValueError(str(exc)) from None
        return SecretStr(value.get_secret_value().strip())

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        from watcher.derivation import DerivationError, parse_path

        try:
            parse_path(value)
        except DerivationError as exc:
            raise ValueError(str(exc)) from None
        return value.strip()

    def deriver(self) -> Deriver | None:
        """The address deriver, or None when no xpub is configured."""
        from watcher.derivation import Deriver

        if self.xpub is None:
            return None
        return Deriver(self.xpub.get_secret_value(), self.path)


# ---------------------------------------------------------------- networks


class _AssetConfig(_Section):
    symbol: str
    decimals: Annotated[int, Field(ge=0, le=77)]
    shared_address: Address | None = None
    #: Base units. Configured as a decimal string in asset units; the default is
    #: `amounts.default_step(decimals)`.
    amount_step: int = 1

    @field_validator("symbol")
    @classmethod
    def _check_symbol(cls, value: str) -> str:
        if not _SYMBOL.match(value):
            raise ValueError("must be 1-20 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("amount_step", mode="before")
    @classmethod
    def _parse_step(cls, value: object, info: ValidationInfo) -> object:
        decimals = info.data.get("decimals")
        if decimals is None:  # decimals is invalid: that error is reported already
            return 1
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError('must be a decimal string in asset units, like "0.01"')
        try:
            step = parse_amount(str(value), decimals)
        except AmountError as e:
            raise ValueError(f"must be a decimal string in asset units: {e}") from None
        if step <= 0:
            raise ValueError("must be greater than 0")
        return step

    @model_validator(mode="after")
    def _default_step(self) -> _AssetConfig:
        if "amount_step" not in self.model_fields_set:
            self.amount_step = default_step(self.decimals)
        return self


class NativeConfig(_AssetConfig):
    pass


class TokenConfig(_AssetConfig):
    address: Address


class NetworkConfig(_Section):
    name: str
    chain_id: Annotated[int, Field(ge=1)]
    rpc: UrlList = Field(default_factory=list)
    ws: WsUrlList = Field(default_factory=list)
    confirmations: Annotated[int, Field(ge=1)] = 12
    block_time: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 2.0
    max_block_range: Annotated[int, Field(ge=1)] = 1000
    #: Seconds between head polls, honoured as given (at least 0.01); default
    #: `block_time / 2`, at least 0.25 (see `effective_poll_interval`).
    poll_interval: Annotated[float, Field(ge=0.01, le=3600, allow_inf_nan=False)] | None = None
    #: `/readyz` fails when the scan is further behind the head than this. Default: about
    #: LAG_SECONDS of blocks, at least MIN_LAG_BLOCKS.
    max_lag_blocks: Annotated[int, Field(ge=1)] = MIN_LAG_BLOCKS
    #: Block explorer (e.g. "https://polygonscan.com"): the checkout links payments to
    #: `{explorer}/tx/{hash}`. None: no links.
    explorer: HttpUrlStr | None = None
    #: Chainlink feeds (AggregatorV3 proxies) on this network by pair, e.g.
    #: {"ETH/USD" = "0x5f4e..."}: `[rates.pairs]` may name a network without a feed.
    feeds: dict[str, Address] = Field(default_factory=dict)
    #: "confirmations": a payment is final at `confirmations`; "safe" / "finalized": it
    #: also has to be at or below the node's block of that tag.
    finality: Literal["confirmations", "safe", "finalized"] = "confirmations"
    #: The first block a new database scans (default: the head at the first start). Used
    #: once, when the network starts; later ranges are read again with `rescan`.
    start_block: Annotated[int, Field(ge=0)] | None = None
    #: Native value sent by contracts' internal calls, from traces: "off", "trace_block"
    #: (Erigon, Nethermind, Reth, anvil) or "debug_trace" (geth's callTracer).
    internal_transfers: Literal["off", "trace_block", "debug_trace"] = "off"
    #: Watched token recipients per topic-filtered `eth_getLogs`; more recipients are split
    #: into several queries (providers cap the topic list).
    log_topic_chunk: Annotated[int, Field(ge=1, le=10_000)] = 200
    enabled: bool = True
    native: NativeConfig
    tokens: list[TokenConfig] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NETWORK_NAME.match(value):
            raise ValueError("must be 1-32 lowercase letters, digits, '_' or '-'")
        return value

    @field_validator("tokens")
    @classmethod
    def _unique_assets(cls, tokens: list[TokenConfig], info: ValidationInfo) -> list[TokenConfig]:
        native = info.data.get("native")
        seen: set[str] = {native.symbol.lower()} if isinstance(native, NativeConfig) else set()
        addresses: set[str] = set()
        for t in tokens:
            if t.symbol.lower() in seen:
                raise ValueError(f"symbol {t.symbol} is used twice (native included)")
            if t.address in addresses:
                raise ValueError(f"address {t.address} is listed twice")
            seen.add(t.symbol.lower())
            addresses.add(t.address)
        return tokens

    @model_validator(mode="after")
    def _default_lag(self) -> NetworkConfig:
        if "max_lag_blocks" not in self.model_fields_set:
            self.max_lag_blocks = max(MIN_LAG_BLOCKS, math.ceil(LAG_SECONDS / self.block_time))
        return self

    @property
    def effective_poll_interval(self) -> float:
        """The configured interval as given; without one, half a block, at least 0.25 s."""
        if self.poll_interval is not None:
            return self.poll_interval
        return max(MIN_POLL_INTERVAL, self.block_time / 2)

    def assets(self) -> dict[str, Asset]:
        """Every payable asset of this network by symbol, the native coin first."""
        out: dict[str, Asset] = {}
        for a in [self.native, *self.tokens]:
            out[a.symbol] = Asset(
                network=self.name,
                symbol=a.symbol,
                decimals=a.decimals,
                token=a.address if isinstance(a, TokenConfig) else None,
                shared_address=a.shared_address,
                amount_step=a.amount_step,
            )
        return out


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def merge_network(base: dict[str, Any], table: dict[str, Any]) -> dict[str, Any]:
    """A config table over a shipped network file: field by field, tokens by symbol."""
    out = _deep_merge(
        {k: v for k, v in base.items() if k != "tokens"},
        {k: v for k, v in table.items() if k != "tokens"},
    )
    tokens = [dict(t) for t in base.get("tokens", [])]
    override = table.get("tokens", [])
    if not isinstance(override, list):
        out["tokens"] = override  # not a list: let validation name the problem
        return out
    for entry in override:
        symbol = entry.get("symbol") if isinstance(entry, dict) else None
        match = next((i for i, t in enumerate(tokens) if symbol and t.get("symbol") == symbol), -1)
        if match < 0:
            tokens.append(entry)
        else:
            tokens[match] = _deep_merge(tokens[match], entry)
    out["tokens"] = tokens
    return out


# ---------------------------------------------------------------- settings


#: An instance's name in `[cluster]`: what `/v1/networks` and `status` show as a leader.
_INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,62}\Z")


class ClusterConfig(_Section):
    """Several instances on one PostgreSQL database (contract section 13)."""

    failover_after: Annotated[Duration, Field(gt=0, le=3600)] = 30
    instance_name: str | None = None  # default: the host name and the process id

    @field_validator("instance_name")
    @classmethod
    def _check_instance_name(cls, value: str | None) -> str | None:
        if value is not None and not _INSTANCE_NAME.match(value):
            raise ValueError("must be 1-63 letters, digits, '.', '_', ':' or '-', starting "
                             "with a letter or digit")
        return value


def postgres_url_problem(url: str) -> str | None:
    """Why a `postgresql://` URL cannot be used, or None."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.password is not None:
        return ("holds a password: put it in database_password_file (or the systemd "
                f"credential {DATABASE_PASSWORD_CREDENTIAL}) instead")
    if not parts.hostname and "host=" not in parts.query:
        return "names no host: postgresql://USER@HOST[:PORT]/DATABASE"
    if not parts.path.strip("/"):
        return "names no database: postgresql://USER@HOST[:PORT]/DATABASE"
    return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
    )

    #: a SQLite file, or a `postgresql://USER@HOST[:PORT]/DATABASE` URL
    database: str = DEFAULT_DATABASE
    database_password_file: Path | None = None
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["text", "json"] = "text"
    api: ApiConfig = Field(default_factory=ApiConfig)
    callbacks: CallbacksConfig = Field(default_factory=CallbacksConfig)
    invoices: InvoicesConfig = Field(default_factory=InvoicesConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    checkout: CheckoutConfig = Field(default_factory=CheckoutConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    channels: ChannelsConfig = Field(default_factory=ChannelsConfig)
    rates: RatesConfig = Field(default_factory=RatesConfig)
    addresses: AddressesConfig = Field(default_factory=AddressesConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    cluster: ClusterConfig | None = None
    networks: dict[str, NetworkConfig] = Field(default_factory=dict)
    _database_password: SecretStr | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _toml_path.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @field_validator("database", mode="before")
    @classmethod
    def _database_text(cls, value: object) -> object:
        return str(value) if isinstance(value, os.PathLike) else value

    @field_validator("database")
    @classmethod
    def _check_database(cls, value: str) -> str:
        if is_postgres_url(value):
            problem = postgres_url_problem(value)
            if problem:
                raise ValueError(problem)
            return value
        if not value.strip() or value == ".":
            raise ValueError("must be a file path or a postgresql:// URL")
        return value

    @field_validator("database_password_file")
    @classmethod
    def _check_password_file(cls, path: Path | None) -> Path | None:
        if path is not None:
            _parse_secret(_read_secret(path), path)
        return path

    @model_validator(mode="after")
    def _check_engine(self) -> Settings:
        """PostgreSQL's keys only with a PostgreSQL database; its password from
        `database_password_file` or the systemd credential `database_password`."""
        if not self.postgres:
            for key, value in (("database_password_file", self.database_password_file),
                               ("cluster", self.cluster)):
                if value is not None:
                    raise ValueError(f"{key}: only with a postgresql:// database")
            return self
        source = self.database_password_file or _credential(DATABASE_PASSWORD_CREDENTIAL)
        if source is not None:
            self._database_password = _parse_secret(_read_secret(source), source)
        return self

    @property
    def postgres(self) -> bool:
        return is_postgres_url(self.database)

    @property
    def database_password(self) -> SecretStr | None:
        return self._database_password

    def database_secret(self) -> str | None:
        """The PostgreSQL password itself, for the connection (never logged)."""
        secret = self._database_password
        return secret.get_secret_value() if secret is not None else None

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("networks", mode="before")
    @classmethod
    def _merge_shipped(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for name, table in value.items():
            if not isinstance(table, dict):
                out[name] = table
                continue
            if "name" in table and table["name"] != name:
                raise ValueError(
                    f"[networks.{name}] sets name = {table['name']!r}: "
                    "a network's name is its table name"
                )
            base = shipped.load_network_file(name) if shipped.is_shipped(name) else {}
            out[name] = merge_network(base, table) if base else {**table, "name": name}
        return out

    def feed_of(self, pair: str, source: RateSourceConfig) -> str | None:
        """The feed address a chainlink source reads: its own, else its network's."""
        if source.chainlink is None:
            return None
        net = self.networks.get(source.chainlink)
        return source.feed or (net.feeds.get(pair) if net is not None else None)

    def enabled_networks(self) -> dict[str, NetworkConfig]:
        return {k: n for k, n in self.networks.items() if n.enabled}

    def runtime_problems(self) -> list[str]:
        """What stops `run` though the file is valid: no enabled network, or one with no
        RPC URL."""
        enabled = self.enabled_networks()
        if not enabled:
            return ["networks: no enabled network: add a [networks.NAME] table"]
        problems = [
            f"networks.{name}.rpc: at least one RPC URL is required"
            for name, net in enabled.items()
            if not net.rpc
        ]
        for pair, sources in self.rates.pairs.items():
            for i, src in enumerate(sources):
                if src.chainlink is None:
                    continue
                net = enabled.get(src.chainlink)
                if net is None:
                    problems.append(
                        f"rates.pairs.{pair}.{i}.chainlink: network {src.chainlink!r} is not "
                        f"an enabled network (enabled: {', '.join(enabled) or 'none'})"
                    )
                elif src.feed is None and pair not in net.feeds:
                    known = ", ".join(net.feeds) or "none"
                    problems.append(
                        f"rates.pairs.{pair}.{i}.feed: {src.chainlink} has no feed for {pair} "
                        f"(its feeds: {known}); give feed = \"0x...\""
                    )
        co = self.checkout
        if co.enabled and co.port != 0 and (co.host, co.port) == (self.api.host, self.api.port):
            problems.append(
                "checkout.listen: the same address as api.listen; the public checkout "
                "needs a listener of its own"
            )
        problems.extend(self._dashboard_problems())
        return problems

    def _dashboard_problems(self) -> list[str]:
        """The dashboard's listener is neither the API's (leave `listen` unset for that)
        nor the public checkout's; a session's idle time fits in its lifetime."""
        dash = self.dashboard
        if not dash.enabled:
            return []
        problems = []
        if dash.listen is not None and dash.port != 0:
            where = (dash.host, dash.port)
            if where == (self.api.host, self.api.port):
                problems.append(
                    "dashboard.listen: the same address as api.listen; leave it unset to "
                    "serve the dashboard on the API listener"
                )
            co = self.checkout
            if co.enabled and where == (co.host, co.port):
                problems.append(
                    "dashboard.listen: the same address as checkout.listen; the public "
                    "checkout must never serve the dashboard"
                )
        if dash.session_idle > dash.session_lifetime:
            problems.append(
                f"dashboard.session_idle: {dash.session_idle} s is longer than "
                f"dashboard.session_lifetime ({dash.session_lifetime} s)"
            )
        return problems

    def require_runnable(self) -> None:
        """Raise ConfigError if `runtime_problems()` finds any."""
        problems = self.runtime_problems()
        if problems:
            raise ConfigError(problems)

    def warnings(self) -> list[str]:
        """Valid but probably unintended settings, one line each."""
        out = []
        if not self.api.api_keys:
            out.append("api.api_keys: none configured: every /v1 request will be refused (401)")
        if self.callbacks.secret is None:
            out.append("callbacks.secret: not set: callbacks cannot be signed")
        elif len(self.callbacks.secret.get_secret_value()) < 16:
            out.append("callbacks.secret: shorter than 16 characters")
        dash = self.dashboard
        host = dash.host if dash.listen is not None else self.api.host
        if dash.enabled and not dash.secure and host not in ("127.0.0.1", "::1", "localhost"):
            out.append(
                f"dashboard.public_url: the dashboard listens on {host} without an https:// "
                "public_url: sign-ins and session cookies could cross the network in clear"
            )
        return out


# ---------------------------------------------------------------- loading


@contextmanager
def _reading(path: Path | None) -> Iterator[None]:
    token = _toml_path.set(path)
    try:
        yield
    finally:
        _toml_path.reset(token)


def _describe(error: Any) -> str:
    loc = ".".join(str(p) for p in error["loc"]) or "config"
    kind = error["type"]
    if kind == "extra_forbidden":
        msg = "unknown key"
    elif kind == "missing":
        msg = "required key is missing"
        parts = error["loc"]
        if len(parts) == 3 and parts[0] == "networks" and not shipped.is_shipped(str(parts[1])):
            msg += f" (no shipped network is named {parts[1]!r}: define it in full)"
    else:
        msg = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        msg = msg[:1].lower() + msg[1:]
    return f"{loc}: {msg}"


def validation_problems(error: ValidationError) -> list[str]:
    """One line per problem of a pydantic ValidationError, starting with the key path."""
    return [_describe(e) for e in error.errors(include_url=False, include_input=False)]


def load_settings(path: str | Path | None = None) -> Settings:
    """Read, merge and validate the configuration. `path` None: `$PAYMENT_WATCHER_CONFIG`.
    Raises ConfigError (one line per problem) on any problem."""
    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
    if path is None:
        raise ConfigError(
            [f"config: no configuration file given: use --config PATH or set {CONFIG_ENV}"]
        )
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a TOML file"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror or e}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: TOML syntax error: {e}"]) from None
    try:
        with _reading(path):
            return Settings()
    except ValidationError as e:
        raise ConfigError(validation_problems(e)) from None
    except SettingsError as e:
        raise ConfigError(
            [f"env: {e}: lists from {ENV_PREFIX}* variables must be JSON, like '[\"https://...\"]'"]
        ) from None
    except tomllib.TOMLDecodeError as e:  # the file changed under us
        raise ConfigError([f"{path}: TOML syntax error: {e}"]) from None


def shipped_network(name: str) -> NetworkConfig:
    """A shipped network file validated as it stands (no config, no RPC unless shipped).
    KeyError if none is named so; ConfigError if the file is invalid."""
    raw = shipped.load_network_file(name)
    try:
        return NetworkConfig.model_validate({"name": name, **raw})
    except ValidationError as e:
        raise ConfigError([f"networks/{name}.toml: {p}" for p in validation_problems(e)]) from None
