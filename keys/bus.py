"""What a process needs to join the bus, and nothing else: no home, no provisioning.

The server's actors get their :class:`BusSettings` from the home
(``Home.bus_settings``); the machine agent builds them from its ``agent.toml``
(machine_agent/config.py). Either way the runtime needs only this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nacl.signing

from proto.errors import ConfigError

from .files import atomic_write


@dataclass(frozen=True)
class BusSettings:
    """What a process needs to join the bus; built from a home or an agent config."""

    name: str
    key_file: Path
    boot_file: Path
    publish_endpoint: str
    subscribe_endpoint: str
    broker_public: bytes  # z85
    vault_public: nacl.signing.VerifyKey
    max_message_bytes: int = 65536
    heartbeat_ivl_ms: int = 2000
    heartbeat_timeout_ms: int = 6000
    heartbeat_interval: int = 5
    journal_file: Path | None = None  # persist the replay window (command receivers)


def next_boot(path) -> int:
    """Increment and persist a boot counter; it only grows, across crashes too."""
    path = Path(path)
    try:
        boot = int(path.read_text().strip() or 0) + 1
    except FileNotFoundError:
        boot = 1
    except ValueError:
        raise ConfigError(f"{path} is corrupt; it must hold one integer") from None
    atomic_write(path, f"{boot}\n".encode(), mode=0o600)
    return boot
