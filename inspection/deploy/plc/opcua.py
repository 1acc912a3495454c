"""OPC UA server for the PLC handshake (asyncua): one object per station, its variables and two methods.

    Objects/<station>/  State, Ready, Busy, ResultReady, Error, CommandError, TriggersRefused, ProductId   (read)
                        PartId (write), Trigger (write, rising edge), Acknowledge (write, rising edge)
                        StartSingleJob(PartId) -> ErrorCode,  AcknowledgeResult() -> ErrorCode
                        PrepareProduct(ProductId) -> InternalId, Error    (OPC 40100-1 7.5.2.7)
                        UnprepareProduct(ProductId) -> InternalId, Error  (OPC 40100-1 7.5.2.8)
                        Result/ PartId, ResultId, ResultState, Verdict, ClassCode, DefectType, DefectScore,
                                BoxCount, LargestBox, ModelVersion, ProductId, ErrorCode, CreationTime,
                                ProcessingTime

Security: Basic256Sha256 Sign&Encrypt by default; users by password (OPCUA_PASSWORD) and/or by client
certificate (a folder of trusted certificates); anonymous only when configured. Names follow OPC 40100-1
(machine vision) where they fit; this is not a conformant companion-specification server (docs/plc.md).
"""
from __future__ import annotations

import asyncio
import datetime
import hmac
import os
import socket
from pathlib import Path

from inspection.deploy.plc.handshake import Handshake, PLCError

NAMESPACE = "urn:inspection:plc"
POLICIES = ("Basic256Sha256_SignAndEncrypt", "Basic256Sha256_Sign", "Aes256Sha256RsaPss_SignAndEncrypt",
            "Aes128Sha256RsaOaep_SignAndEncrypt", "NoSecurity")
RESULT = {  # node name → (result field, OPC UA type name)
    "PartId": ("part_id", "String"), "ResultId": ("sequence", "UInt32"), "ResultState": ("verdict", "Int32"),
    "Verdict": ("verdict_name", "String"), "ClassCode": ("class_code", "Int32"),
    "DefectType": ("defect_type", "String"), "DefectScore": ("score", "Double"), "BoxCount": ("boxes", "Int32"),
    "LargestBox": ("largest_box", "Int32"), "ModelVersion": ("model_version", "String"),
    "ProductId": ("product", "String"), "ErrorCode": ("error", "Int32"), "CreationTime": ("created", "DateTime"),
    "ProcessingTime": ("processing_ms", "Double")}


class _Users:
    """Password users (one account from the config, password from the environment) and certificate users."""

    def __init__(self, username: str, password: str, anonymous: bool, trusted: list):
        self.username, self.password, self.anonymous, self.trusted = username, password, anonymous, trusted

    def get_user(self, iserver, username=None, password=None, certificate=None):
        from asyncua.crypto.permission_rules import User, UserRole
        from cryptography.hazmat.primitives.serialization import Encoding

        if username is not None:
            ok = bool(self.username and self.password) and hmac.compare_digest(
                f"{username}\0{password}".encode(), f"{self.username}\0{self.password}".encode())
            return User(role=UserRole.User, name=username) if ok else None
        if certificate is not None:
            der = certificate if isinstance(certificate, bytes) else certificate.public_bytes(Encoding.DER)
            return User(role=UserRole.User, name="certificate") if der in self.trusted else None
        return User(role=UserRole.User, name="anonymous") if self.anonymous else None


def _secure_sessions_only(create, ua):
    """The server's session factory, with activation refused on a channel without security: asyncua opens a
    None channel even when None is not configured (GetEndpoints over it is how a client learns the server's
    certificate), and would activate a session there with a password sent in clear, or with no client
    certificate where only trusted certificates may open channels."""
    from asyncua.server.internal_session import ServiceError

    def create_checked(*args, **kw):
        session = create(*args, **kw)
        activate = session.activate_session

        def checked(params, peer_certificate):
            if not peer_certificate:  # every configured secure policy carries the client's certificate (None: b"")
                raise ServiceError(ua.StatusCodes.BadSecurityPolicyRejected)
            return activate(params, peer_certificate)
        session.activate_session = checked
        return session
    return create_checked


class OPCUAServer:
    """Serves the handshake; start() and stop() run in the PLC link's event loop."""

    name = "OPC UA"

    def __init__(self, handshake: Handshake, cfg, host: str, station: str, metrics):
        self.hs, self.cfg, self.host, self.station, self.metrics = handshake, cfg, host, station, metrics
        self.port = cfg.port
        self.server = None
        self.nodes: dict = {}
        self.edges = {"Trigger": False, "Acknowledge": False}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lock: asyncio.Lock | None = None  # one snapshot written at a time, in the order they came

    async def start(self) -> None:
        from asyncua import Server, ua
        from asyncua.common.callback import CallbackType
        from asyncua.crypto import uacrypto

        cfg = self.cfg
        password = os.environ.get("OPCUA_PASSWORD", "")
        if cfg.username and not password:
            raise PLCError("plc.opcua.username is set but the OPCUA_PASSWORD environment variable is empty")
        trusted = []
        if cfg.trusted_clients:
            folder = Path(cfg.trusted_clients)
            if not folder.is_dir():
                raise PLCError(f"plc.opcua.trusted_clients: {folder} is not a folder of client certificates")
            for p in sorted(folder.iterdir()):
                if p.suffix.lower() in (".der", ".pem", ".crt"):
                    trusted.append(uacrypto.der_from_x509(await uacrypto.load_certificate(p)))
        self.loop, self.lock = asyncio.get_running_loop(), asyncio.Lock()
        uri = f"urn:inspection:{socket.gethostname()}:{self.station}"
        server = Server(user_manager=_Users(cfg.username, password, cfg.anonymous, trusted))
        await server.init()
        server.set_endpoint(f"opc.tcp://{self.host}:{cfg.port}/inspection/")
        server.set_server_name(f"inspection {self.station}")
        await server.set_application_uri(uri)
        server.set_security_policy([getattr(ua.SecurityPolicyType, p) for p in cfg.security])
        tokens = ([ua.UserNameIdentityToken] if cfg.username else []) + \
                 ([ua.X509IdentityToken] if trusted else []) + ([ua.AnonymousIdentityToken] if cfg.anonymous else [])
        server.set_identity_tokens(tokens)
        if any(p != "NoSecurity" for p in cfg.security):
            cert, key = await self._certificate(uri)
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
        if trusted:  # the secure channel accepts only these client certificates
            from asyncua.crypto.truststore import TrustStore
            from asyncua.crypto.validator import (
                CertificateValidator,
                CertificateValidatorOptions,
            )

            store = TrustStore([Path(cfg.trusted_clients)], [])
            await store.load()
            server.set_certificate_validator(CertificateValidator(
                CertificateValidatorOptions.TIME_RANGE | CertificateValidatorOptions.TRUSTED |
                CertificateValidatorOptions.PEER_CLIENT, store))
        await self._build(server, ua)
        server.subscribe_server_callback(CallbackType.PostWrite, self._written)
        try:
            await server.start()
        except (OSError, RuntimeError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise PLCError(f"plc.opcua.port: cannot listen on {self.host}:{cfg.port} ({why})") from None
        if "NoSecurity" not in cfg.security:
            server.iserver.create_session = _secure_sessions_only(server.iserver.create_session, ua)
        self.server = server
        self.publish(self.hs.snapshot())

    async def _certificate(self, uri: str) -> tuple[Path, Path]:
        """The configured certificate and key, or a self-signed pair kept in plc.opcua.pki (made once)."""
        if self.cfg.certificate:
            return Path(self.cfg.certificate), Path(self.cfg.private_key)
        from asyncua.crypto.cert_gen import setup_self_signed_certificate
        from cryptography.x509.oid import ExtendedKeyUsageOID

        pki = Path(self.cfg.pki)
        pki.mkdir(parents=True, exist_ok=True)
        cert, key = pki / f"{self.station}-cert.der", pki / f"{self.station}-key.pem"
        await setup_self_signed_certificate(key, cert, uri, socket.gethostname(), [ExtendedKeyUsageOID.SERVER_AUTH],
                                            {"commonName": f"inspection {self.station}"})
        os.chmod(key, 0o600)
        return cert, key

    async def _build(self, server, ua) -> None:
        idx = await server.register_namespace(NAMESPACE)
        obj = await server.nodes.objects.add_object(idx, self.station)
        for name, value, vt in (("State", "Ready", "String"), ("Ready", True, "Boolean"), ("Busy", False, "Boolean"),
                                ("ResultReady", False, "Boolean"), ("Error", False, "Boolean"),
                                ("CommandError", 0, "Int32"), ("TriggersRefused", 0, "UInt32"),
                                ("ProductId", "", "String"), ("PartId", "", "String"), ("Trigger", False, "Boolean"),
                                ("Acknowledge", False, "Boolean")):
            node = await obj.add_variable(idx, name, ua.Variant(value, getattr(ua.VariantType, vt)))
            if name in ("PartId", "Trigger", "Acknowledge"):
                await node.set_writable()
            self.nodes[name] = node
        result = await obj.add_object(idx, "Result")
        for name, (_, vt) in RESULT.items():
            value = [0, 0, 0, 0] if name == "LargestBox" else _default(vt)
            self.nodes["Result/" + name] = await result.add_variable(
                idx, name, ua.Variant(value, getattr(ua.VariantType, vt)))
        i32 = ua.VariantType.Int32
        await obj.add_method(idx, "StartSingleJob", self._start_job, [ua.VariantType.String], [i32])
        await obj.add_method(idx, "AcknowledgeResult", self._ack, [], [i32])
        # 40100-1's signatures and argument names; ProductId and InternalId as strings (no 40100 nodeset here)
        args = [_argument(ua, "ProductId", "the product to work on next"),
                _argument(ua, "InternalId", "the model version the product's parts will be judged with"),
                _argument(ua, "Error", "0 OK; < 0 the command error negated (docs/plc.md)", ua.ObjectIds.Int32)]
        for name, action in (("PrepareProduct", self.hs.prepare), ("UnprepareProduct", self.hs.unprepare)):
            await obj.add_method(idx, name, self._product_method(action), args[:1], args[1:])

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()

    # -- from the PLC -------------------------------------------------------------------------------------------------
    async def _start_job(self, parent, part_id) -> list:
        from asyncua import ua

        return [ua.Variant(self.hs.trigger(part_id.Value if hasattr(part_id, "Value") else part_id),
                           ua.VariantType.Int32)]

    def _product_method(self, action):
        """PrepareProduct / UnprepareProduct: run off the event loop (loading a model takes time; the Modbus server
        and the other clients keep being served); 40100 wants application errors negative."""
        async def method(parent, product_id) -> list:
            from asyncua import ua

            pid = str((product_id.Value if hasattr(product_id, "Value") else product_id) or "").strip()
            code = await asyncio.get_running_loop().run_in_executor(None, action, pid)
            version = "" if code else self.hs.products.version(pid)
            return [ua.Variant(version, ua.VariantType.String), ua.Variant(-code, ua.VariantType.Int32)]
        return method

    async def _ack(self, parent) -> list:
        from asyncua import ua

        return [ua.Variant(self.hs.ack(), ua.VariantType.Int32)]

    async def _written(self, event, dispatcher) -> None:
        """Rising edges of Trigger and Acknowledge written by a client (PartId is read at the trigger)."""
        if not event.is_external:
            return
        by_id = {self.nodes[n].nodeid: n for n in ("Trigger", "Acknowledge")}
        for item, status in zip(event.request_params.NodesToWrite, event.response_params or []):
            name = by_id.get(item.NodeId)
            if name is None or not status.is_good():
                continue
            value = bool(item.Value.Value.Value)
            rising, self.edges[name] = value and not self.edges[name], value
            if rising and name == "Trigger":
                self.hs.trigger(await self.nodes["PartId"].read_value())
            elif rising:
                self.hs.ack()

    # -- to the PLC ---------------------------------------------------------------------------------------------
    def publish(self, snap: dict) -> None:
        """Handshake listener (any thread): the result first, then the state flags."""
        if self.loop is not None and self.server is not None:
            self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._write(snap)))

    async def _write(self, snap: dict) -> None:
        from asyncua import ua

        from inspection.deploy.plc.handshake import PLCResult

        result = PLCResult(**snap["result"])
        values = []
        for name, (attr, vt) in RESULT.items():
            v = getattr(result, attr)
            if vt == "DateTime":
                v = datetime.datetime.fromtimestamp(v or 0, datetime.timezone.utc)
            values.append(("Result/" + name, v, vt))
        state = snap["state"]
        error = bool(snap["command_error"]) or state == "ResultReady" and bool(result.error)
        values += [("CommandError", snap["command_error"], "Int32"), ("TriggersRefused", snap["refused"], "UInt32"),
                   ("ProductId", snap.get("product", ""), "String"),
                   ("Error", error, "Boolean"), ("Busy", state == "Busy", "Boolean"),
                   ("ResultReady", state == "ResultReady", "Boolean"), ("Ready", state == "Ready", "Boolean"),
                   ("State", state, "String")]
        async with self.lock:
            for name, v, vt in values:
                await self.server.write_attribute_value(self.nodes[name].nodeid,
                                                        ua.DataValue(ua.Variant(v, getattr(ua.VariantType, vt))))


def _argument(ua, name: str, description: str, datatype: int | None = None):
    """A method argument as 40100 names it (a scalar; String unless said)."""
    return ua.Argument(Name=name, DataType=ua.NodeId(datatype or ua.ObjectIds.String), ValueRank=-1,
                       ArrayDimensions=[], Description=ua.LocalizedText(description))


def _default(vt: str):
    epoch = datetime.datetime.fromtimestamp(0, datetime.timezone.utc)
    return {"String": "", "Double": 0.0, "DateTime": epoch}.get(vt, 0)
