"""The status token: who may change state through the status server, and by what name.

The token file (``status.token_file``) holds one token per line, either the
token alone or ``NAME TOKEN`` (a name without spaces, then the token), so each
operator or tool can have its own token and the audit trail says who acted.
A token alone is named ``DEFAULT_NAME``. Blank lines and lines starting with
``#`` are ignored. The file is read at each request, so tokens can be added or
revoked without a restart.
"""

from __future__ import annotations

import hmac
from typing import Final

import structlog
from aiohttp import web

from gateway.config import StatusConfig
from gateway.core.config import read_secret

log = structlog.get_logger(__name__)

DEFAULT_NAME: Final = "status-token"


def parse_tokens(text: str) -> list[tuple[str, str]]:
    """``(name, token)`` pairs of a token file; ``ValueError`` for a malformed line."""
    out = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) == 1:
            out.append((DEFAULT_NAME, parts[0]))
        elif len(parts) == 2:
            out.append((parts[0], parts[1]))
        else:
            raise ValueError(f"status token file line {n}: expected 'TOKEN' or 'NAME TOKEN'")
    if not out:
        raise ValueError("status token file holds no token")
    return out


def token_name(tokens: list[tuple[str, str]], header: str) -> str | None:
    """The name of the token an ``Authorization`` header carries, or None.

    Every token is compared (in constant time each), so the time taken does
    not tell which one nearly matched.
    """
    found = None
    for name, token in tokens:
        if hmac.compare_digest(header.encode(), f"Bearer {token}".encode()):
            found = found or name
    return found


def authorize(request: web.Request, cfg: StatusConfig,
              action: str = "state-changing actions") -> str:
    """The name of the caller's token; raises 403/401/503 when it may not act."""
    path = cfg.token_file
    if path is None:
        if action == "state-changing actions":
            text = "state-changing actions are disabled: set status.token_file in the config"
        else:
            text = (f"{action} are refused: the status server listens beyond loopback "
                    f"(status.host = {cfg.host!r}) and no status.token_file is set; "
                    "set one and send Authorization: Bearer <token>, or ask with ?bodies=0")
        raise web.HTTPForbidden(text=text)
    try:
        tokens = parse_tokens(read_secret(path, "status token"))
    except ValueError as err:
        log.error("status_token_unreadable", path=str(path), error=str(err))
        raise web.HTTPServiceUnavailable(text=str(err)) from None
    name = token_name(tokens, request.headers.get("Authorization", ""))
    if name is None:
        raise web.HTTPUnauthorized(text="missing or wrong bearer token")
    return name
