"""Where studies live: resolve the storage URL, mask its password, open it once per process."""

from __future__ import annotations

import os
import re

import optuna

from mt_tune.errors import UserError

ENV_VAR = "MT_TUNE_STORAGE"
DEFAULT_URL = "sqlite:///mt-tune.db"


def resolve_url(cli_value: str | None = None) -> str:
    """`--storage URL` > $MT_TUNE_STORAGE > the embedded default in the working directory."""
    return cli_value or os.environ.get(ENV_VAR) or DEFAULT_URL


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, safe to print, log or store."""
    return re.sub(r"^([a-zA-Z0-9+.\-]+://[^:/@]+):[^@]*@", r"\1:***@", url)


_opened: dict[str, optuna.storages.BaseStorage] = {}


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """One storage (one engine, one pool) per URL per process."""
    if url not in _opened:
        try:
            _opened[url] = optuna.storages.RDBStorage(url)
        except Exception as e:  # noqa: BLE001 - any driver error becomes one line naming the URL
            raise UserError(f"storage {mask_url(url)}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    return _opened[url]
