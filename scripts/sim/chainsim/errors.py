"""JSON-RPC error codes as Bitcoin Core defines them (src/rpc/protocol.h)."""

from __future__ import annotations

from proto.errors import DctrlError

RPC_INVALID_REQUEST = -32600
RPC_METHOD_NOT_FOUND = -32601
RPC_INVALID_PARAMS = -32602
RPC_INTERNAL_ERROR = -32603
RPC_PARSE_ERROR = -32700

RPC_MISC_ERROR = -1
RPC_TYPE_ERROR = -3
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_OUT_OF_MEMORY = -7
RPC_INVALID_PARAMETER = -8
RPC_DATABASE_ERROR = -20
RPC_DESERIALIZATION_ERROR = -22
RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_CHAIN = -27
RPC_IN_WARMUP = -28
RPC_WALLET_INSUFFICIENT_FUNDS = -6


class ChainSimError(DctrlError):
    """Root of the chain simulator's errors."""

    code = "chain_sim"


class RpcError(ChainSimError):
    """An error answered as a JSON-RPC error object ``{"code": .., "message": ..}``."""

    def __init__(self, rpc_code: int, message: str):
        super().__init__(message)
        self.rpc_code = rpc_code
        self.message = message

    def to_json(self) -> dict:
        return {"code": self.rpc_code, "message": self.message}


class Rejected(ChainSimError, ValueError):
    """Mempool acceptance refused a transaction (Core's TxValidationState)."""

    def __init__(self, reason: str, debug: str = "", missing_inputs: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.debug = debug
        self.missing_inputs = missing_inputs

    def __str__(self):
        # TxValidationState::ToString(): "reason, debug message"
        return self.reason + (f", {self.debug}" if self.debug else "")

    def to_rpc(self) -> RpcError:
        # HandleATMPError: missing inputs -> RPC_TRANSACTION_ERROR (-25), other invalid -> -26
        return RpcError(RPC_VERIFY_ERROR if self.missing_inputs else RPC_VERIFY_REJECTED, str(self))
