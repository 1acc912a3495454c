"""Modbus TCP server for the PLC handshake (pymodbus). The register map is the integrator's table in docs/plc.md.

    coils (PLC writes)        0 Trigger (rising edge), 1 Ack (rising edge), 8 Prepare (rising edge)
    discrete inputs (PLC reads) 0 Ready, 1 Busy, 2 ResultReady, 3 OK, 4 NG, 5 Review, 6 Error
    holding registers         0-1 part sequence (PLC writes before Trigger, high word first); 2-17 results
                              (read-only); 18 product number (PLC writes before Prepare); 19-21 product (read-only)

Any unit ID is answered. Addresses outside the map, writes to read-only registers and input-register reads
are answered with exception 02 (illegal data address), a write that touches any such address is refused whole
before anything acts, and a Write Single Coil value other than 0xFF00 (on) or 0x0000 (off) with exception 03
(illegal data value); each is counted in plc_bad_requests_total.
"""
from __future__ import annotations

from inspection.deploy.plc.handshake import (
    NO_CLASS,
    STATE_CODES,
    VERDICT_CODES,
    Handshake,
    PLCError,
    version_id,
)

COILS = {0: "Trigger", 1: "Ack", 8: "Prepare"}  # 2-7 stay free: the handshake's coils, then the product's
INPUTS = ("Ready", "Busy", "ResultReady", "OK", "NG", "Review", "Error")
HOLDING = ("PartSequenceHigh", "PartSequenceLow", "ResultSequenceHigh", "ResultSequenceLow", "Verdict",
           "ClassCode", "Score", "BoxCount", "BoxX", "BoxY", "BoxWidth", "BoxHeight", "ModelVersionId",
           "ErrorCode", "CommandError", "TriggersRefused", "State", "ResultCount",
           "ProductNumber", "ProductState", "PreparedProduct", "ResultProduct")
WRITABLE = (0, 1, 18)  # holding registers the PLC may write


def input_bits(snap: dict) -> list[bool]:
    r, state = snap["result"], snap["state"]
    ready = state == "ResultReady"
    return [state == "Ready", state == "Busy", ready,
            ready and r["verdict"] == VERDICT_CODES["pass"],
            ready and r["verdict"] in (VERDICT_CODES["fail"], VERDICT_CODES["review"], VERDICT_CODES["error"]),
            ready and r["verdict"] == VERDICT_CODES["review"],
            bool(snap["command_error"]) or ready and bool(r["error"])]


def result_registers(snap: dict) -> list[int]:
    """Holding registers 2.. (the result and the handshake's state) as 16-bit values."""
    r = snap["result"]
    seq = int(r["part_id"]) % 2**32 if r["part_id"].isdigit() else 0
    code = 65535 if r["class_code"] == NO_CLASS else r["class_code"]
    return [seq >> 16, seq & 0xFFFF, r["verdict"], code, min(1000, round(1000 * r["score"])), min(r["boxes"], 65535),
            *(min(max(int(v), 0), 65535) for v in r["largest_box"]), version_id(r["model_version"]), r["error"],
            snap["command_error"], snap["refused"] % 65536, STATE_CODES[snap["state"]], r["sequence"] % 65536]


def product_registers(snap: dict) -> list[int]:
    """Holding registers 19-21: ProductState (0 none, 1 preparing, 2 ready, 3 error), the prepared product's
    number, the number of the product the result was judged as."""
    return [snap["product_state"], snap["product_number"], snap["result"]["product_number"]]


class ModbusServer:
    """Serves the handshake; start() and stop() run in the PLC link's event loop."""

    name = "Modbus TCP"

    def __init__(self, handshake: Handshake, host: str, port: int, metrics):
        self.hs, self.host, self.port, self.metrics = handshake, host, port, metrics
        self.coils = dict.fromkeys(COILS, False)
        self.written = dict.fromkeys(WRITABLE, 0)  # holding registers 0-1 (part sequence) and 18 (product number)
        self.server = None

    async def start(self) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import SimData, SimDevice
        from pymodbus.simulator.simutils import DataType

        device = SimDevice(0, simdata=([SimData(0, count=16, values=False, datatype=DataType.BITS)],
                                       [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                                       [SimData(0, count=len(HOLDING), values=0, datatype=DataType.REGISTERS)],
                                       [SimData(0, count=1, datatype=DataType.INVALID)]), action=self._action)
        self.server = ModbusTcpServer(device, address=(self.host, self.port), custom_pdu=[self._strict_single_coil()])
        try:
            await self.server.serve_forever(background=True)
        except RuntimeError:
            raise PLCError(f"plc.modbus.port: cannot listen on {self.host}:{self.port} "
                          "(in use by another program, or a privileged port)") from None

    def _strict_single_coil(self):
        """Write Single Coil that refuses values other than 0xFF00 and 0x0000 (pymodbus takes any non-zero as on)."""
        import struct

        from pymodbus.constants import ExcCodes
        from pymodbus.pdu import ExceptionResponse
        from pymodbus.pdu.bit_message import WriteSingleCoilRequest

        metrics = self.metrics

        class StrictWriteSingleCoil(WriteSingleCoilRequest):
            raw = 0xFF00

            def decode(self, data: bytes) -> None:
                super().decode(data)
                self.raw = struct.unpack(">HH", data[:4])[1]

            async def datastore_update(self, context, device_id):
                if self.raw not in (0xFF00, 0x0000):
                    metrics.inc("plc_bad_requests_total")
                    return ExceptionResponse(self.function_code, ExcCodes.ILLEGAL_VALUE)
                return await super().datastore_update(context, device_id)

        return StrictWriteSingleCoil

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()

    async def _action(self, fc, start, address, count, registers, values):
        from pymodbus.constants import ExcCodes

        if fc in (1, 5, 15):
            size, block = max(COILS) + 1, "coil"
        elif fc == 2:
            size, block = len(INPUTS), "input"
        elif fc in (3, 6, 16, 23):
            size, block = len(HOLDING), "holding"
        else:
            size, block = 0, "other"
        if values is not None and block == "coil":
            count = len(values)  # for bits pymodbus passes the count of 16-bit words, not of coils
        writable = WRITABLE if block == "holding" else COILS
        if address < 0 or address + count > size or values is not None and block in ("holding", "coil") and \
                any(a not in writable for a in range(address, address + count)):
            self.metrics.inc("plc_bad_requests_total")
            return ExcCodes.ILLEGAL_ADDRESS
        if block == "coil":
            if values is not None:
                for i, v in enumerate(values):
                    self._coil(address + i, bool(v))
            registers[0] = sum(1 << a for a, c in self.coils.items() if c)
        elif block == "input":
            registers[0] = sum(1 << i for i, b in enumerate(input_bits(self.hs.snapshot())) if b)
        else:
            if values is not None:
                for i, v in enumerate(values):
                    self.written[address + i] = int(v)
            snap = self.hs.snapshot()
            registers[:len(HOLDING)] = [self.written[0], self.written[1], *result_registers(snap),
                                        self.written[18], *product_registers(snap)]
        return None

    def _coil(self, address: int, value: bool) -> None:
        rising = value and not self.coils[address]
        self.coils[address] = value
        if rising and COILS[address] == "Trigger":
            self.hs.trigger(str((self.written[0] << 16) | self.written[1]))
        elif rising and COILS[address] == "Ack":
            self.hs.ack()
        elif rising:  # Prepare: Preparing at once, the rest in a thread (ProductState says how it went)
            number = self.written[18]
            product = self.hs.products.by_number(number) if self.hs.products is not None else None
            self.hs.prepare(product or f"#{number}", wait=False)
