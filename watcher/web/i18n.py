"""The checkout's texts: one JSON catalogue per language in `watcher/web/i18n/`, and the
choice of language from `?lang=`, then `Accept-Language`, then the first one offered."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from importlib import resources

_DIR = resources.files("watcher.web").joinpath("i18n")

#: Languages with a catalogue, e.g. ("de", "en").
LANGUAGES: tuple[str, ...] = tuple(
    sorted(p.name.removesuffix(".json") for p in _DIR.iterdir() if p.name.endswith(".json"))
)


@cache
def catalogue(lang: str) -> dict[str, str]:
    """Every text of one language by key (`LANGUAGES` only)."""
    if lang not in LANGUAGES:
        raise KeyError(lang)
    data = json.loads(_DIR.joinpath(f"{lang}.json").read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in data.items()}


def _accepted(header: str) -> list[str]:
    """Primary language tags of an Accept-Language header, best first (q=0 dropped)."""
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate(header.split(",")[:32]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        tag = tag.strip().lower().split("-")[0]
        if tag and q > 0:
            ranked.append((-q, i, tag))
    return [tag for _, _, tag in sorted(ranked)]


def pick(query_lang: str | None, accept_language: str | None, offered: Sequence[str]) -> str:
    """The language to answer in: `?lang=` if offered, else the best offered one of
    Accept-Language, else the first offered."""
    if query_lang is not None and query_lang in offered:
        return query_lang
    for tag in _accepted(accept_language or ""):
        if tag in offered:
            return tag
    return offered[0]
