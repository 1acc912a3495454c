"""The PLC link: the handshake (handshake.py) and the protocol servers the station config asks for (OPC UA,
Modbus TCP), served from one event-loop thread. torch-free."""
from __future__ import annotations

import threading

from inspection.deploy.plc.handshake import Handshake


class PLCLink:
    """The handshake and its protocol servers (OPC UA, Modbus TCP), served from one event-loop thread.

    start() raises PLCError naming the config field when a server cannot start (port in use, bad certificate)."""

    def __init__(self, cfg, station: str, metrics, products=None):
        self.cfg, self.metrics = cfg, metrics
        self.handshake = Handshake(metrics, cfg.result_timeout_ms / 1000, cfg.ack_timeout_ms / 1000, products)
        self.servers: list = []
        if cfg.opcua.port:
            from inspection.deploy.plc.opcua import OPCUAServer

            self.servers.append(OPCUAServer(self.handshake, cfg.opcua, cfg.host, station, metrics))
            self.handshake.listeners.append(self.servers[-1].publish)
        if cfg.modbus.port:
            from inspection.deploy.plc.modbus import ModbusServer

            self.servers.append(ModbusServer(self.handshake, cfg.host, cfg.modbus.port, metrics))
        self.loop = None
        self.thread: threading.Thread | None = None

    def start(self) -> list[str]:
        import asyncio
        import logging

        for name in ("asyncua", "pymodbus"):  # their INFO is per request: a line PC's journal wants only trouble
            logging.getLogger(name).setLevel(logging.WARNING)

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="plc", daemon=True)
        self.thread.start()
        started = []
        try:
            for server in self.servers:
                asyncio.run_coroutine_threadsafe(server.start(), self.loop).result(30)
                started.append(server)
        except BaseException:
            self.servers = started
            self.stop()
            raise
        return [f"{s.name} on {self.cfg.host}:{s.port}" for s in self.servers]

    def stop(self) -> None:
        import asyncio

        self.handshake.close()
        if self.loop is None:
            return
        for server in self.servers:
            try:
                asyncio.run_coroutine_threadsafe(server.stop(), self.loop).result(10)
            except Exception:  # noqa: BLE001 - stopping must go on
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop = None
