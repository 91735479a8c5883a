"""The HTML pages: server-rendered (bottle templates), usable on a phone, no CDN."""

from __future__ import annotations

import bottle

from actors.server.app import Server


def install(app: bottle.Bottle, server: Server) -> None:
    pass
