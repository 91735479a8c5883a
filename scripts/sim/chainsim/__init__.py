"""A regtest bitcoind stand-in: Bitcoin Core's JSON-RPC subset and ZMQ notifications.

See :mod:`scripts.sim.chain` for the entry points and the list of simplifications.
"""

__all__ = ["ChainSim"]


def __getattr__(name):
    # Lazy, so that `scripts.sim.chainsim.outputs` etc. import without zmq or the HTTP server.
    if name == "ChainSim":
        from scripts.sim.chainsim.sim import ChainSim

        return ChainSim
    raise AttributeError(name)
