"""The actor registry: every process and agent part of the network, in one table.

``dctrl init`` gives each server actor an identity (key file and registry entry) and writes the
policy template from its grants (scripts/cli/provision.py); ``dctrl run NAME`` imports and runs
its class; ``dctrl up`` and ``dctrl supervisor-config`` run every supervised one under
supervisord, in this order; ``dctrl status`` expects every supervised one to be ok.

Adding an actor is one :class:`Entry` here plus its package: for a component ``reporter``::

    Entry("reporter", "actors.reporter.actor:Reporter", grants=Grants(publish=("report",), subscribe=("invoice",))),

Classes are dotted strings, so reading this table imports nothing (no zmq, no database): the
CLI's parser, ``dctrl status`` and the agent read it for free. This module imports nothing but
the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Grants:
    """Topic prefixes (whole dot-separated segments; ``{self}`` is the identity's own name)."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()


@dataclass(frozen=True)
class Entry:
    name: str  # the identity, its key file, its program in supervisord, `dctrl run NAME`
    cls: str  # "package.module:Class", imported only to run it
    role: str = "actor"  # the identity's role in keys/registry.json and policy.toml ([role.ROLE])
    grants: Grants = Grants()  # the policy template's [identity.NAME]
    supervised: bool = True  # run by `dctrl up` / supervisor-config, expected ok by `dctrl status`
    part: str = "server"  # "server": a process with its own identity; "agent": a part of dctrl-agent,
    #                       running as the machine's identity under [role.machine]
    own_loop: bool = False  # the class runs itself, cls(home).run() (the broker); otherwise an Actor
    #                         that a Runtime hosts

    @property
    def module(self) -> str:
        return self.cls.partition(":")[0]


PARTS = ("server", "agent")

ENTRIES: tuple[Entry, ...] = (
    # The bus itself first: supervisord starts them in this order.
    Entry("broker", "broker.broker:Broker", grants=Grants(publish=("broker",)), own_loop=True),
    Entry("vault", "actors.vault:Vault", grants=Grants(publish=("vault",), subscribe=("vault.req",))),
    Entry("event_logger", "actors.event_logger.actor:EventLogger", grants=Grants(publish=("events",), subscribe=("",))),
    Entry("price_notifier", "actors.price_notifier:PriceNotifier", grants=Grants(publish=("price",))),
    Entry("chain_notifier", "actors.chain_notifier.actor:ChainNotifier",
          grants=Grants(publish=("chain",), subscribe=("cmd.chain",))),
    Entry("business_data", "actors.business_data.actor:BusinessData",
          grants=Grants(publish=("business",), subscribe=("cmd.business",))),
    # members.ack: the answer to cmd.members.* (the grant "member" covers member.*, not members.*).
    # Dues in bitcoin: it asks the chain notifier to watch its dues addresses and to discover the
    # used ones (those two commands only), and hears the chain's answers and events and the price.
    Entry("member_data", "actors.member_data.actor:MemberData",
          grants=Grants(publish=("member", "members.ack", "cmd.chain.watch", "cmd.chain.discover"),
                        subscribe=("cmd.members", "chain", "price"))),
    # MemberMail: the single writer of mail_outbox; member.* in, mail.* out (the acks of cmd.mail.* too);
    # payout.* in: payout.awaiting_signatures asks the co-signers ([member_mail] cosigners) to sign.
    Entry("member_mail", "actors.member_mail.actor:MemberMail",
          grants=Grants(publish=("mail",), subscribe=("member", "cmd.mail", "payout"))),
    Entry("business_mgr", "actors.business_mgr.actor:BusinessMgr",
          grants=Grants(publish=("cmd.machine", "cmd.chain", "invoice"),
                        subscribe=("machine", "chain", "price", "business"))),
    # member.status: the Reporter's (the grant "member.status" is that topic only, not MemberData's
    # member.changed); health.chain_notifier and price: the feeds whose outages hold transitions back.
    Entry("reporter", "actors.reporter.actor:Reporter",
          grants=Grants(publish=("report", "member.status"),
                        subscribe=("cmd.report", "member.changed", "price", "health.chain_notifier"))),
    # PayoutMgr (issue 13): the treasury's outputs through the chain notifier (it asks it to watch and
    # discover the treasury's addresses: those two commands only), the price for CAD beside sats,
    # payout commands from admins; payout.* out, and payouts.ack (not covered by "payout": grants
    # match whole segments).
    Entry("payout_mgr", "actors.payout_mgr.actor:PayoutMgr",
          grants=Grants(publish=("payout", "payouts.ack", "cmd.chain.watch", "cmd.chain.discover"),
                        subscribe=("chain", "price", "cmd.payouts"))),
    # The vending machine's agent (dctrl-agent, machine_agent/main.py): its parts share the machine's
    # identity and its [role.machine] grants; supervisord runs the demo's agent as a simulator.
    Entry("machine_mgr", "machine_agent.mgr:MachineMgr", role="machine", supervised=False, part="agent"),
    Entry("machine_notifier", "machine_agent.notifier:MachineNotifier", role="machine", supervised=False,
          part="agent"),
)

# The policy template's [all] and [role.ROLE] sections: what every identity, and every identity of
# a role, may publish and subscribe (keys/policy.py adds them to an identity's own grants).
ALL_GRANTS = Grants(publish=("health.{self}", "error.{self}", "vault.req.{self}"),
                    subscribe=("vault.token.{self}", "vault.secret.{self}", "vault.revoked"))
ROLE_GRANTS = {
    "machine": Grants(publish=("machine.{self}",), subscribe=("cmd.machine.{self}",)),
    "admin": Grants(publish=("debug", "cmd.chain", "cmd.business", "cmd.members", "cmd.mail", "cmd.report",
                             "cmd.payouts"),
                    subscribe=("",)),
}


def entry(name: str) -> Entry | None:
    return next((e for e in ENTRIES if e.name == name), None)


def server_actors() -> tuple[Entry, ...]:
    """The processes with an identity of their own (a key each at `dctrl init`), in start order."""
    return tuple(e for e in ENTRIES if e.part == "server")


def supervised() -> tuple[str, ...]:
    """The names `dctrl up` runs and `dctrl status` expects, in start order."""
    return tuple(e.name for e in ENTRIES if e.supervised)


# Every server actor's identity (the runtime keeps their replay windows on disk).
ACTOR_IDENTITIES = tuple(e.name for e in server_actors())
