"""SpaceAPI (v15) at ``/spaceapi.json``: open to everyone, aggregates only."""

from __future__ import annotations

import bottle

from actors.server.app import Server


def install(app: bottle.Bottle, server: Server) -> None:
    pass
