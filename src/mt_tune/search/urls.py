"""Storage URLs: which one to use, the form mt-tune opens, and how to print one without its password.

`--storage URL` wins over $MT_TUNE_STORAGE, which wins over the embedded default
`sqlite:///mt-tune.db` in the working directory. The schemes understood, and why each exists,
are described in mt_tune.search.storage, which opens them.
"""

from __future__ import annotations

import os
import re

import sqlalchemy.exc
from sqlalchemy.engine import make_url

from mt_tune.errors import UserError

ENV_VAR = "MT_TUNE_STORAGE"
DEFAULT_URL = "sqlite:///mt-tune.db"

SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "journal")


def resolve_url(cli_value: str | None = None) -> str:
    """`--storage URL` > $MT_TUNE_STORAGE > the embedded default in the working directory."""
    return cli_value or os.environ.get(ENV_VAR) or DEFAULT_URL


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, safe to print, log or store.

    The user-info part ends at the last "@" before the host, so a password that itself
    contains "@", ":" or "/" is hidden whole; `password=` query parameters are hidden too.
    """
    masked = url
    scheme_end = masked.find("://")
    if scheme_end >= 0:
        rest = masked[scheme_end + 3 :]
        at = rest.rfind("@")
        if at >= 0 and ":" in rest[:at]:
            user = rest[: rest.index(":")]
            masked = f"{masked[: scheme_end + 3]}{user}:***{rest[at:]}"
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", masked)


def scrub(text: str, url: str) -> str:
    """Text (an error message) with the URL's password removed, should a driver echo it."""
    try:
        password = make_url(url).password
    except Exception:  # noqa: BLE001 - an unparsable URL has no password to find
        password = None
    return text.replace(str(password), "***") if password else text


def normalize_url(url: str) -> str:
    """The URL in the form mt-tune opens, or UserError naming what is wrong with it.

    `postgresql://` becomes `postgresql+psycopg://` (the installed driver); other drivers
    and other databases are refused with the list of schemes that work.
    """
    masked = mask_url(url)
    if "://" not in url:
        raise UserError(f"storage URL {masked!r} is not a URL; expected one of: {_scheme_examples()}")
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:
        raise UserError(f"storage URL {masked!r} cannot be parsed ({scrub(str(e), url)}); expected one of: {_scheme_examples()}") from None
    scheme = parsed.drivername
    if scheme not in SCHEMES:
        raise UserError(f"storage URL {masked!r}: unknown scheme {scheme!r}; expected one of: {_scheme_examples()}")
    if scheme in ("sqlite", "journal") and not parsed.database:
        raise UserError(f"storage URL {masked!r} names no file; e.g. {scheme}:///mt-tune.{'db' if scheme == 'sqlite' else 'journal'}")
    if scheme == "postgresql":
        return "postgresql+psycopg" + url[len("postgresql") :]
    return url


def _scheme_examples() -> str:
    return "sqlite:///mt-tune.db, postgresql+psycopg://USER:PASSWORD@HOST:5432/DB, journal:///mt-tune.journal"
