"""The simulators of the demo and the tests: ``chain`` (a regtest bitcoind stand-in; the
``chainsim`` package), ``exchanges`` (the exchanges' price APIs) and ``machine`` (the client
of a simulated vending machine's control socket). `dctrl sim ...` (scripts/cli/sim.py) drives them."""
