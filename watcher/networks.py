"""The shipped network files (`networks/<name>.toml`).

In a built wheel they live inside the package (`watcher/networks/`, force-included by
pyproject); in a source checkout or an editable install they are the repo's top-level
`networks/` folder next to the package.
"""

from __future__ import annotations

import re
import tomllib
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from watcher.errors import ConfigError

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}\Z")


def networks_dir() -> Traversable:
    """The folder holding the shipped `*.toml` files."""
    packaged = files("watcher") / "networks"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "networks"


def available() -> list[str]:
    """Names of the shipped networks, sorted."""
    folder = networks_dir()
    if not folder.is_dir():
        return []
    return sorted(
        entry.name.removesuffix(".toml")
        for entry in folder.iterdir()
        if entry.name.endswith(".toml") and _NAME.match(entry.name.removesuffix(".toml"))
    )


def is_shipped(name: str) -> bool:
    return bool(_NAME.match(name)) and (networks_dir() / f"{name}.toml").is_file()


def load_network_file(name: str) -> dict[str, Any]:
    """The raw TOML table of a shipped network. KeyError if there is none by that name;
    ConfigError if the shipped file is not valid TOML."""
    if not is_shipped(name):
        raise KeyError(f"no shipped network named {name!r}")
    entry = networks_dir() / f"{name}.toml"
    try:
        return tomllib.loads(entry.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"networks/{name}.toml: {e}"]) from None
