"""Several products on one station: the PLC (real asyncua and pymodbus clients), MQTT or the command line prepares
a product, and every part is judged, logged, reviewed and retrained with its own product's model.

Two packages that differ visibly: product a is the tiny test model as exported; product b is the same weights
under another model version, other class names, a station ROI and a model ROI of its own, so a part judged by
the wrong product's model shows in its classes, its version, its boxes and its records."""
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import always_fail
from test_plc import MBStation, UAStation, _client_cert, _free_port, _opcua

from inspection.deploy.line.runner import LineRunner
from inspection.deploy.line.station import StationConfigError, load_station
from inspection.deploy.plc.handshake import version_id
from inspection.deploy.store.sql import SQLiteStore

VERSIONS = {"a": "a-1001", "b": "b-2002"}
NUMBERS = {"a": 1, "b": 2}
ROIS = {"a": None, "b": [4, 4, 64, 64]}  # station ROI: b's model judges only this part of the frame
B_MODEL_ROI = [8, 8, 48, 48]             # b's package's own ROI, inside its station ROI
B_CLASSES = ["good", "dent", "crack", "burr"]
READY, ERROR = 2, 3                      # Modbus ProductState


def _variant(src: Path, dst: Path, version: str, classes=None, roi=None) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / "metadata.json").read_text())
    meta["model_version"] = version
    meta["classes"] = classes or meta["classes"]
    meta["input"]["roi"] = roi
    (dst / "metadata.json").write_text(json.dumps(meta))
    return dst


@pytest.fixture(scope="module")
def packages(exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("products")
    a = _variant(exported["package"], root / "a", VERSIONS["a"])
    b = _variant(exported["package"], root / "b", VERSIONS["b"], B_CLASSES, B_MODEL_ROI)
    classes = {"a": json.loads((a / "metadata.json").read_text())["classes"], "b": B_CLASSES}
    return {"a": a, "b": b, "classes": classes, "data": exported["manifest"].root, "root": root}


def _products(packages, **more) -> list[dict]:
    return [{"id": p, "number": NUMBERS[p], "package": str(packages[p]), "roi": ROIS[p], **more.get(p, {})}
            for p in ("a", "b")]


def _station_file(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(json.loads(json.dumps(tree, default=str))))
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


# -- config ----------------------------------------------------------------------------------------------------
def test_products_in_the_station_config_are_checked_naming_the_key(tmp_path):
    two = load_station(Path(__file__).resolve().parent.parent / "configs" / "station-two-products.yaml")
    assert [p.id for p in two.products] == ["housing-a", "housing-b"] and two.product == "housing-a"
    two_ids = "products=[{id: a, number: 1}, {id: b, number: 2}]"
    for sets, message in [([two_ids, "product=c"], "field product: 'c' is not a product of this station"),
                          (["product=a"], "field product: 'a' is not a product .* none configured"),
                          (["products=[{id: a}, {id: a}]"], r"products\[1\].id: product 'a' is listed twice"),
                          (["products=[{id: 'a b'}]"], r"products\[0\].id must be 1-64 letters"),
                          (["products=[{id: a, roi: [1, 2, 3]}]"], r"products\[0\].roi must be \[x, y"),
                          (["products=[{id: a, genicam: {exposure_us: 500}}]"], r"products\[0\].genicam .* genicam"),
                          (["products=[{id: a, number: 3}, {id: b, number: 3}]"], r"products\[1\].number"),
                          (["products=[{id: a}]", "plc.modbus.port=5020"], r"products\[0\].number: plc.modbus"),
                          (["products=[{id: a, colour: red}]"], r"unknown field\(s\) products\[0\].colour"),
                          (["products={a: 1}"], "field products must be a list of mappings"),
                          ([two_ids, "models_loaded=0"], "models_loaded must be at least 1")]:
        with pytest.raises(StationConfigError, match=message):
            load_station(None, sets)


def test_an_old_failure_log_is_migrated_and_its_records_stay_readable(open_log, monkeypatch):
    """A log written before products (schema 4: the station ROI in `crop`, tallies per station): opened by this
    program it is migrated in place; its records keep their ROI (now `roi`), have no product and no model ROI,
    and its tallies count for product ""."""
    import inspection.deploy.store.sql as sql

    monkeypatch.setattr(sql, "MIGRATIONS", sql.MIGRATIONS[:4])
    old = open_log("old")
    with old._transaction() as ex:
        ex("INSERT INTO failures (part_id, station, ts, model_version, verdict, score, defect_type, boxes, files, "
           "bytes, day, crop) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
           ("p1", "line-1", time.time(), "v1", "fail", 0.9, "scratch", "[]", "{}", 0, time.strftime("%Y-%m-%d"),
            "[10, 20, 64, 48]"))
        ex("INSERT INTO tallies (day, station, verdict, n) VALUES (?, ?, ?, ?)",
           (time.strftime("%Y-%m-%d"), "line-1", "fail", 3))
    assert old.schema_version() == 4
    monkeypatch.undo()
    new = open_log("old")
    assert new.schema_version() == 5
    (r,) = new.records()
    assert (r.roi, r.crop, r.product, r.model_roi, r.damaged) == ([10, 20, 64, 48], [10, 20, 64, 48], "", None, None)
    (day,) = new.daily(1)
    assert (day["product"], day["inspected"], day["fail"], day["logged"]) == ("", 3, 3, 1)
    new.tally("line-1", {(time.strftime("%Y-%m-%d"), "pass", "b"): 2})
    assert {(d["product"], d["inspected"]) for d in new.daily(1)} == {("", 3), ("b", 2)}


# -- the PLC alternates products -------------------------------------------------------------------------------
class UAProducts(UAStation):
    async def bind(self):
        await super().bind()
        ns = await self.c.get_namespace_index("urn:inspection:plc")
        for name in ("PrepareProduct", "UnprepareProduct", "ProductId", "Busy"):
            self.n[name] = await self.obj.get_child(f"{ns}:{name}")
        res = await self.obj.get_child(f"{ns}:Result")
        for name in ("ProductId", "ModelVersion", "DefectType"):
            self.n["Result/" + name] = await res.get_child(f"{ns}:{name}")
        return self

    async def prepare(self, product: str, method="PrepareProduct") -> list:
        """[InternalId, Error] as 40100's PrepareProduct / UnprepareProduct answer."""
        return list(await self.obj.call_method(self.n[method], product))

    async def wait_result(self, timeout=10.0) -> dict:
        r = await super().wait_result(timeout)
        extra = {k: await self.value(f"Result/{name}") for k, name in (("product", "ProductId"),
                 ("version", "ModelVersion"), ("defect_type", "DefectType"))}
        return {**r, **extra}


class MBProducts(MBStation):
    async def registers(self) -> list[int]:
        return (await self.c.read_holding_registers(0, count=22)).registers

    async def prepare(self, number: int) -> list[int]:
        """Product number, a rising Prepare edge, then ProductState until ready or error: the registers."""
        await self.c.write_register(18, number)
        await self.c.write_coil(8, False)
        await self.c.write_coil(8, True)
        deadline = time.time() + 30
        while (hr := await self.registers())[19] not in (READY, ERROR):
            assert time.time() < deadline, "no end to the prepare"
            await asyncio.sleep(0.002)
        return hr

    async def wait_result(self, timeout=10.0) -> dict:
        r = await super().wait_result(timeout)
        hr = await self.registers()
        return {**r, "version_id": hr[12], "product_number": hr[21]}


@pytest.fixture
def two_product_runner(packages, tmp_path):
    """`inspection run` with products a and b, both PLC servers, replaying the tiny set; every part logged."""
    ua, mb = _free_port(), _free_port()
    station = _station_file(tmp_path / "station.yaml", {
        "station": "cell-2", "package": packages["a"], "reload_s": 0, "jsonl": tmp_path / "verdicts.jsonl",
        "source": {"kind": "simulated", "path": packages["data"], "loop": True},
        "log": {"folder": tmp_path / "log", "fsync": False, "verdicts": ["pass", "fail", "review", "error"]},
        "plc": {"opcua": {"port": ua, "username": "plc", "pki": tmp_path / "pki"}, "modbus": {"port": mb}},
        "products": _products(packages)})
    with open(tmp_path / "runner.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "inspection.cli", "run", "--station", str(station),
                                 "--product", "a"], stderr=err, env={**os.environ, "OPCUA_PASSWORD": "pw-plc"})
    deadline = time.time() + 60
    while not all(_listening(port) for port in (ua, mb)):  # both servers listen once the self-check is done
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "runner.err").read_text()
        time.sleep(0.1)
    try:
        yield {"ua": ua, "mb": mb, "proc": proc, "tmp": tmp_path}
    finally:
        proc.kill() if proc.poll() is None else None


def test_plc_clients_alternate_two_products_and_no_part_is_judged_by_the_other_products_model(two_product_runner,
                                                                                                packages):
    """An asyncua client and a pymodbus client switch between a and b every few parts, 120 parts each: every
    verdict line, PLC result and failure record names the product prepared and its model's version; a prepare
    before the result is acknowledged is refused with 7, an unknown product with 8, and in both cases the next
    part is judged as the product prepared before; after UnprepareProduct a trigger is refused with 10."""
    env, rng = two_product_runner, random.Random(7)
    started = "self-check products: 2 configured" in (env["tmp"] / "runner.err").read_text()

    async def drive() -> list[tuple]:
        done, prepared = [], "a"  # (protocol, part ID, product prepared, PLC result)
        mb = await MBProducts(env["mb"]).connect()
        assert (await mb.registers())[19:21] == [READY, NUMBERS["a"]]  # --product a: prepared at start
        while len(done) < 120:
            prepared = "b" if prepared == "a" else "a"
            hr = await mb.prepare(NUMBERS[prepared])
            assert hr[19:21] == [READY, NUMBERS[prepared]] and hr[14] == 0 and hr[16] == 1  # ready, no error, Ready
            for _ in range(rng.randint(2, 6)):
                part = 500000 + len(done)
                await mb.trigger(part)
                result = await mb.wait_result()
                if len(done) in (30, 31):  # the result not acknowledged yet: the part is not finished
                    hr = await mb.prepare(NUMBERS["b" if prepared == "a" else "a"])
                    assert hr[19:21] == [ERROR, NUMBERS[prepared]] and hr[14] == 7
                await mb.ack()
                done.append(("modbus", str(part), prepared, result))
            if len(done) > 60 and not any(d[1] == "unknown" for d in done):
                hr = await mb.prepare(99)  # no product has number 99: refused, nothing changes
                assert hr[19:21] == [ERROR, NUMBERS[prepared]] and hr[14] == 8
                done.append(("modbus", "unknown", prepared, None))
        mb.c.close()

        cert = await _client_cert(env["tmp"] / "client", "plc")
        ua = await UAProducts(await _opcua(env["ua"], cert), "cell-2").bind()
        n = 0
        while n < 120:
            prepared = "b" if prepared == "a" else "a"
            assert await ua.prepare(prepared) == [VERSIONS[prepared], 0]
            assert await ua.value("ProductId") == prepared
            for _ in range(rng.randint(2, 6)):
                assert await ua.trigger(f"UA-{n:04d}") == 0
                result = await ua.wait_result()
                if n == 40:
                    assert await ua.prepare("b" if prepared == "a" else "a") == ["", -7]  # ResultReady: refused
                    assert await ua.value("CommandError") == 7
                assert await ua.ack() == 0
                if n == 80:  # between two parts, an unknown product: refused, the next part is judged as before
                    assert await ua.prepare("no-such-product") == ["", -8]
                    assert await ua.value("CommandError") == 8 and await ua.value("ProductId") == prepared
                done.append(("opcua", f"UA-{n:04d}", prepared, result))
                n += 1
        # UnprepareProduct: no product prepared, a trigger is refused until the next PrepareProduct
        assert await ua.prepare(prepared, "UnprepareProduct") == [VERSIONS[prepared], 0]
        assert await ua.value("ProductId") == "" and await ua.trigger("UA-none") == 10
        assert await ua.prepare("a") == [VERSIONS["a"], 0]
        await ua.c.disconnect()
        return done

    done = asyncio.run(drive())
    proc = env["proc"]
    proc.terminate()
    assert proc.wait(30) == 0
    lines = {x["part_id"]: x for x in _lines(env["tmp"] / "verdicts.jsonl")}
    store = SQLiteStore(env["tmp"] / "log" / "failures.db", env["tmp"] / "log", fsync=False)
    records = {r.part_id: r for r in store.records(limit=10**4)}
    parts = [d for d in done if d[3] is not None]
    assert len(parts) >= 240 and set(lines) == {d[1] for d in parts} == set(records)  # refused: no frame
    wrong = []
    for protocol, part, prepared, result in parts:
        line, record, version = lines[part], records[part], VERSIONS[prepared]
        judged_as = {line["product"], record.product, result.get("product", prepared)}
        versions = {line["model_version"], record.model_version, result.get("version", version)}
        if protocol == "modbus":
            judged_as.add({1: "a", 2: "b"}.get(result["product_number"]))
            versions.add(version if result["version_id"] == version_id(version) else result["version_id"])
        types = {line["defect_type"], record.defect_type, result.get("defect_type") or None} - {None}
        if judged_as != {prepared} or versions != {version} or not types <= set(packages["classes"][prepared]) or \
                record.roi != ROIS[prepared] or prepared == "b" and record.model_roi != B_MODEL_ROI:
            wrong.append((part, prepared, judged_as, versions, types, record.roi, record.model_roi))
    assert wrong == [], wrong[:5]
    assert {d[2] for d in parts} == {"a", "b"} and sum(d[2] == "b" for d in parts) > 80
    for part in (d[1] for d in parts if d[2] == "b"):  # b's boxes lie in b's station ROI, in frame pixels
        assert all(4 <= b["x0"] and b["x1"] <= 68 and 4 <= b["y0"] and b["y1"] <= 68 for b in lines[part]["boxes"])
    assert started, "the self-check names the products and their loaded models"


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _in_process(packages, tmp_path, **sets) -> LineRunner:
    values = {"package": packages["a"], "source.kind": "simulated", "source.path": packages["data"],
              "jsonl": tmp_path / "verdicts.jsonl", "log.folder": tmp_path / "log", "reload_s": 0, "log.fsync": False,
              "log.verdicts": "[pass, fail, review, error]", "products": json.dumps(_products(packages))}
    values.update(sets)
    return LineRunner(load_station(None, [f"{k}={v}" for k, v in values.items()]))


def test_a_prepare_while_busy_is_refused_and_the_next_part_is_judged_as_the_product_before(packages, tmp_path,
                                                                                         monkeypatch):
    """A trigger whose frame has not come (a watched folder, no file yet) keeps the station Busy: PrepareProduct
    (OPC UA) and the Prepare coil (Modbus) are refused with 7 and change nothing; the frame then comes and is
    judged as b, the product prepared before. With models_loaded 1 a switch loads the package it needs."""
    monkeypatch.setenv("OPCUA_PASSWORD", "pw-plc")
    (tmp_path / "in").mkdir()
    ua, mb = _free_port(), _free_port()
    runner = _in_process(packages, tmp_path, **{
        "source.kind": "watch", "source.path": tmp_path / "in", "source.settle_ms": 50, "product": "b",
        "models_loaded": 1, "plc.opcua.port": ua, "plc.opcua.username": "plc", "plc.opcua.pki": tmp_path / "pki",
        "plc.modbus.port": mb, "plc.result_timeout_ms": 20000, "station": "cell-3"})
    assert list(runner.products.models) == ["b"]  # one model in memory: the prepared product's
    runner.self_check()
    thread = threading.Thread(target=runner.run)
    thread.start()
    image = next(Path(packages["data"], "good").glob("*.png"))

    async def drive():
        plc = await UAProducts(await _opcua(ua, await _client_cert(tmp_path / "client", "plc")), "cell-3").bind()
        modbus = await MBProducts(mb).connect()
        assert await plc.trigger("P-1") == 0 and await plc.value("Busy")
        assert await plc.prepare("a") == ["", -7] and await plc.value("CommandError") == 7
        hr = await modbus.prepare(NUMBERS["a"])
        assert hr[19:21] == [ERROR, NUMBERS["b"]] and hr[14] == 7 and hr[16] == 2  # still Busy, b prepared
        shutil.copy(image, tmp_path / "in" / "p1.png")  # the part's frame comes
        first = await plc.wait_result()
        assert await plc.ack() == 0
        assert await plc.prepare("a") == [VERSIONS["a"], 0]  # now between two parts: prepared (loaded first)
        assert await plc.prepare("nope") == ["", -8]
        assert await plc.trigger("P-2") == 0
        shutil.copy(image, tmp_path / "in" / "p2.png")
        second = await plc.wait_result()
        assert await plc.ack() == 0
        modbus.c.close()
        await plc.c.disconnect()
        return first, second

    try:
        first, second = asyncio.run(drive())
    finally:
        runner.stop()
        thread.join(30)
    assert (first["part"], first["product"], first["version"]) == ("P-1", "b", VERSIONS["b"])
    assert (second["part"], second["product"], second["version"]) == ("P-2", "a", VERSIONS["a"])
    assert [(x["part_id"], x["product"]) for x in _lines(tmp_path / "verdicts.jsonl")] == [("P-1", "b"), ("P-2", "a")]
    assert runner.metrics.get("model_loads_total") == 2 and list(runner.products.models) == ["a"]
    assert runner.health()["product"] == "a" and runner.health()["plc"]["product"] == "a"


def test_mqtt_and_the_command_line_select_the_product_without_a_plc(packages, tmp_path):
    """No PLC: `inspection run --product b` starts with b; a product ID published on mqtt.product_topic prepares
    it (the answer is retained on <topic>/state); frames taken after the switch are judged as the new product."""
    import paho.mqtt.client as mqtt
    from test_line import _mosquitto

    port = _free_port()
    broker = _mosquitto(port, "-p", str(port))
    try:
        runner = _in_process(packages, tmp_path, **{
            "source.loop": "true", "source.fps": 40, "product": "b", "mqtt.host": "127.0.0.1", "mqtt.port": port,
            "mqtt.product_topic": "inspection/{station}/product", "station": "cell-m"})
        thread = threading.Thread(target=runner.run)
        thread.start()
        states = []
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="line-controller")
        client.on_message = lambda c, u, msg: states.append(json.loads(msg.payload))
        client.connect("127.0.0.1", port)
        client.subscribe("inspection/cell-m/product/state", qos=1)
        client.loop_start()
        deadline = time.time() + 30
        while runner.metrics.get("frames_total") < 10 or runner.metrics.get("mqtt_connected") < 1:
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # the runner's subscription to the product topic is acknowledged
        client.publish("inspection/cell-m/product", json.dumps({"product": "a"}), qos=1).wait_for_publish(5)
        while not states:
            assert time.time() < deadline
            time.sleep(0.05)
        switched_at = runner.metrics.get("frames_total")
        client.publish("inspection/cell-m/product", "no-such-product", qos=1).wait_for_publish(5)
        while len(states) < 2 or runner.metrics.get("frames_total") < switched_at + 10:
            assert time.time() < deadline
            time.sleep(0.05)
        runner.stop()
        thread.join(30)
        client.loop_stop()
    finally:
        broker.terminate()
        broker.wait(5)
    assert states == [{"product": "a", "error": 0, "prepared": True},
                      {"product": "no-such-product", "error": 8, "prepared": False}]
    products = [(x["product"], x["model_version"]) for x in _lines(tmp_path / "verdicts.jsonl")]
    switch = products.index(("a", VERSIONS["a"]))
    assert 10 <= switch and set(products[:switch]) == {("b", VERSIONS["b"])} and \
        set(products[switch:]) == {("a", VERSIONS["a"])}  # one switch, between two frames; the unknown changed nothing


def test_hot_reload_follows_each_products_registry(packages, tmp_path):
    """Each product's package is a registry pointer: promoting into b's registry reloads b's model only."""
    pointers = {}
    for p in ("a", "b"):
        shutil.copytree(packages[p], tmp_path / "models" / p / "versions" / VERSIONS[p])
        pointers[p] = tmp_path / "models" / p / "current"
        pointers[p].write_text(f"versions/{VERSIONS[p]}")
    products = [{**p, "package": str(pointers[p["id"]])} for p in _products(packages)]
    runner = _in_process(packages, tmp_path, **{"products": json.dumps(products), "reload_s": 0.1,
                                                "source.loop": "true", "source.fps": 40})
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        _variant(packages["b"], tmp_path / "models" / "b" / "versions" / "b-2003", "b-2003", B_CLASSES, B_MODEL_ROI)
        (tmp_path / "models" / "b" / "current.tmp").write_text("versions/b-2003")
        (tmp_path / "models" / "b" / "current.tmp").replace(pointers["b"])  # a promotion: the pointer switches
        deadline = time.time() + 30
        while runner.metrics.get("model_reloads_total") < 1:
            assert time.time() < deadline
            time.sleep(0.05)
        assert runner.select("b") == 0 and runner.products.version("b") == "b-2003"
        assert runner.products.version("a") == VERSIONS["a"]
        before = runner.metrics.get("frames_total")
        while runner.metrics.get("frames_total") < before + 5:
            time.sleep(0.05)
    finally:
        runner.stop()
        thread.join(30)
    assert runner.metrics.get("model_reloads_total") == 1
    assert _lines(tmp_path / "verdicts.jsonl")[-1]["model_version"] == "b-2003"


# -- GenICam: the product's camera settings at the switch ------------------------------------------------------
@pytest.mark.parametrize("selected_by", ["modbus", "select"])
def test_a_switch_sets_the_products_exposure_and_roi_on_the_camera(packages, tmp_path, camera, selected_by):
    """Aravis' GigE Vision emulator: each product has its own exposure and camera ROI; at every switch the
    camera is set (read back from it) and every frame judged as a product has that product's size. By the PLC
    (software trigger, one frame per trigger) and in free run (the switch made between two frames)."""
    camera("TEST01")
    mb = _free_port()
    cams = {"a": {"exposure_us": 2000.0, "roi": [0, 0, 256, 256]}, "b": {"exposure_us": 7000.0,
                                                                           "roi": [64, 32, 320, 240]}}
    products = [{"id": p, "number": NUMBERS[p], "package": str(packages["a"]), "genicam": cams[p]} for p in "ab"]
    sets = {"source.kind": "genicam", "source.genicam.device": "TEST01", "source.genicam.pixel_format": "Mono8",
            "products": json.dumps(products), "source.reconnect_max_s": 0.5}
    if selected_by == "modbus":
        sets.update({"source.genicam.trigger": "software", "plc.modbus.port": mb})
    runner = _in_process(packages, tmp_path, **sets)
    runner.self_check()
    thread = threading.Thread(target=runner.run)
    thread.start()
    source = runner.capture.source

    def read_back() -> tuple:  # from the camera's registers, through the runner's own connection
        return round(source.camera.get_exposure_time()), list(source.camera.get_region())

    async def by_plc() -> list:
        plc, seen, n = await MBProducts(mb).connect(), [read_back()], 0
        for product in ("a", "b", "a", "b"):
            assert (await plc.prepare(NUMBERS[product]))[19] == READY
            seen.append(read_back())
            for _ in range(3):
                await plc.trigger(7000 + n)
                await plc.wait_result()
                await plc.ack()
                n += 1
        plc.c.close()
        return seen

    def by_select() -> list:
        seen = [read_back()]
        for product in ("b", "a", "b"):
            before = runner.metrics.get("frames_total")
            while runner.metrics.get("frames_total") < before + 3:
                assert thread.is_alive()
                time.sleep(0.02)
            assert runner.select(product) == 0
            seen.append(read_back())
        time.sleep(0.5)
        return seen

    try:
        seen = asyncio.run(by_plc()) if selected_by == "modbus" else by_select()
    finally:
        runner.stop()
        thread.join(30)
    order = ["a", "a", "b", "a", "b"] if selected_by == "modbus" else ["a", "b", "a", "b"]
    assert seen == [(cams[p]["exposure_us"], cams[p]["roi"]) for p in order]
    store = SQLiteStore(tmp_path / "log" / "failures.db", tmp_path / "log", fsync=False)
    sizes = {}
    for r in store.records(limit=1000):
        h, w = cv2.imread(str(store.path(r, "image")), cv2.IMREAD_UNCHANGED).shape[:2]
        sizes.setdefault(r.product, set()).add((w, h))
    assert sizes == {"a": {(256, 256)}, "b": {(320, 240)}}, sizes  # no frame of the other product's settings


@pytest.fixture
def camera():
    from test_genicam import FakeCamera

    cams = []

    def start(serial="TEST01"):
        cams.append(FakeCamera(serial).start())
        return cams[-1]
    yield start
    for c in cams:
        c.kill()


# -- review: each part with its own product's package ----------------------------------------------------------
@pytest.fixture(scope="module")
def product_log(packages, tmp_path_factory):
    """Parts of a and of b in one failure log (every part logged: thresholds at 0), from two runs."""
    tmp = tmp_path_factory.mktemp("product-log")
    fail = {p: always_fail(packages[p], tmp / f"pkg-{p}") for p in ("a", "b")}
    products = [{**p, "package": str(fail[p["id"]])} for p in _products(packages)]
    for product, limit in (("a", 24), ("b", 16)):
        sets = {"package": fail["a"], "source.kind": "simulated", "source.path": packages["data"],
                "source.limit": limit, "jsonl": "", "log.folder": tmp / "log", "reload_s": 0, "log.fsync": False,
                "station": "line-p", "queue.policy": "block", "products": json.dumps(products), "product": product}
        LineRunner(load_station(None, [f"{k}={v}" for k, v in sets.items()])).run()
    return {"folder": tmp / "log", "packages": fail}


def test_the_review_station_draws_and_rescores_a_part_of_b_with_bs_package(product_log, tmp_path):
    """Headless Chromium: the queue filters and counts by product; a part of b shows its product and model, its
    map lies where b's model looked (its model ROI in the stored image), and re-scoring runs b's package (its
    classes, and the logged map gives back the logged score), while the station also holds a's parts. Given only
    a's package, the same part can still be judged and re-scoring says why it is off."""
    from fastapi.testclient import TestClient
    from playwright.sync_api import expect, sync_playwright
    from test_review import CHROMIUM, CHROMIUM_FLAGS, LEAD

    from inspection.deploy.review.app import ReviewConfig, create_app

    log = tmp_path / "log"
    shutil.copytree(product_log["folder"], log)
    store = SQLiteStore(log / "failures.db", log, fsync=False)
    counts = {p: store.count(product=p) for p in ("a", "b")}
    assert counts == {"a": 24, "b": 16}
    pkgs = product_log["packages"]
    app = create_app(ReviewConfig(log, pkgs["a"], packages=[pkgs["b"]]))
    app.state.review.accounts.add_user(*LEAD, role="lead")
    srv = _serve(app)
    server = srv.url
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            assert page.request.post(server + "/login", form={"user": LEAD[0], "password": LEAD[1]}).ok
            page.goto(server + "/")  # the session cookie the login set is the page's
            expect(page.locator("#product-counts")).to_contain_text("a 24")
            expect(page.locator("#product-counts")).to_contain_text("b 16")
            page.select_option("select[name=product]", "b")
            page.click("#apply")
            expect(page.locator("#counts")).to_contain_text("16 part(s)")
            assert {c.inner_text() for c in page.locator("#queue td.product").all()} == {"b"}
            page.keyboard.press("j")
            page.keyboard.press("Enter")
            expect(page.locator("#product")).to_have_text("b")
            expect(page.locator("#model")).to_have_text(VERSIONS["b"])
            part = store.get(int(page.locator("#part").get_attribute("data-id")))
            assert part.product == "b" and part.model_roi == B_MODEL_ROI
            heat = page.request.get(f"{server}/parts/{part.id}/attention.png").body()
            att = cv2.imdecode(np.frombuffer(heat, np.uint8), cv2.IMREAD_UNCHANGED)
            x, y, w, h = B_MODEL_ROI
            inside = att[y:y + h, x:x + w]
            assert att.shape == (64, 64) and inside.max() > 0 and att.sum() == inside.sum()  # b's model's region
            with page.expect_response(lambda r: r.url.endswith("/rescore")) as answer:
                page.keyboard.press("r")
            rescored = answer.value.json()
            expect(page.locator("#rescored")).to_be_visible()
            browser.close()
        assert rescored["model_version"] == VERSIONS["b"] and list(rescored["before"]["probs"]) == B_CLASSES
        assert abs(rescored["before"]["defect_score"] - part.score) < 1e-3  # b's package and ROI: the logged score
    finally:
        srv.should_exit = True

    only_a = TestClient(create_app(ReviewConfig(log, pkgs["a"], tmp_path / "a.accounts.db")))
    only_a.app.state.review.accounts.add_user(*LEAD, role="lead")
    only_a.post("/login", data={"user": LEAD[0], "password": LEAD[1]})
    text = only_a.get(f"/parts/{part.id}").text
    assert "re-scoring is off for this part: its model b-2002 of product b is in none" in text
    csrf = text.split('data-csrf="')[1].split('"')[0]
    refused = only_a.post(f"/api/parts/{part.id}/rescore", headers={"X-CSRF-Token": csrf},
                          json={"corrected": _png(np.zeros((64, 64), np.uint8))})
    assert refused.status_code == 409 and "b-2002" in refused.json()["error"]
    judged = only_a.post(f"/api/parts/{part.id}/review", headers={"X-CSRF-Token": csrf},
                         json={"verdict": "defect", "defect_type": "dent"})  # b's class: b's parts may use it...
    assert judged.status_code == 400  # ...only where b's model is known; a's types are offered instead
    assert only_a.post(f"/api/parts/{part.id}/review", headers={"X-CSRF-Token": csrf},
                       json={"verdict": "false_alarm"}).status_code == 200


def _png(a: np.ndarray) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(cv2.imencode(".png", a)[1].tobytes()).decode()


def _serve(app):
    import uvicorn

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    deadline = time.time() + 10
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    srv.url = f"http://127.0.0.1:{port}"
    return srv


# -- retrain per product ---------------------------------------------------------------------------------------
def test_retrain_of_product_b_changes_only_bs_registry(packages, exported, tmp_path, monkeypatch):
    """Parts of a and b logged and reviewed; `retrain --product b` fine-tunes b's production model on b's reviews
    only and promotes into b's registry (the gate's decision forced: this test is about where things go); a's
    registry is byte for byte as it was."""
    from inspection.cli import main
    from inspection.datasets.synthetic import generate
    from inspection.deploy.registry import Registry
    from inspection.training import retrain as module
    from inspection.training.scripted_reviewer import scripted_review

    regs = {}
    for p in ("a", "b"):
        src = _variant(exported["package"], tmp_path / f"v1-{p}", f"{p}-1")
        regs[p] = Registry(tmp_path / "models" / p)
        regs[p].add(src, checkpoint=exported["best"])
        regs[p].promote(f"{p}-1")
    products = [{"id": p, "number": NUMBERS[p], "package": str(regs[p].root / "current")} for p in ("a", "b")]
    for product, limit in (("a", 0), ("b", 0)):
        sets = {"package": regs["a"].root / "current", "source.kind": "simulated", "source.path": packages["data"],
                "source.limit": limit, "jsonl": "", "log.folder": tmp_path / "log", "reload_s": 0,
                "log.fsync": False, "products": json.dumps(products), "product": product}
        LineRunner(load_station(None, [f"{k}={v}" for k, v in sets.items()])).run()
    reviewed = scripted_review(tmp_path / "log", packages["data"])
    store = SQLiteStore(tmp_path / "log" / "failures.db", tmp_path / "log", fsync=False)
    of_b = sum(1 for r in store.records(limit=10**4, product="b") if r.review_status != "unreviewed")
    assert 0 < of_b < reviewed
    generate(tmp_path / "golden", n_good=12, n_per_type=4, size=96, seed=11, defect_types=("scratch", "hole", "stain"),
             progress=False)
    a_before = {p.relative_to(regs["a"].root): p.read_bytes() for p in regs["a"].root.rglob("*") if p.is_file()}
    real_gate = module.gate
    monkeypatch.setattr(module, "gate", lambda *args: {**real_gate(*args), "promote": True})
    out = tmp_path / "retrain"
    assert main(["retrain", "--product", "b", "--registry", str(regs["b"].root), "--log", str(tmp_path / "log"),
                 "--golden", str(tmp_path / "golden"), "--data", str(packages["data"]), "--out", str(out),
                 "--min-reviews", "1", "--set", "train.epochs=1", "--quiet"]) == 0
    (result,) = [json.loads(p.read_text()) for p in out.glob("b-*/result.json")]
    assert result["status"] == "promoted" and result["new_reviews"] == of_b
    assert result["reviewed"]["good"] + result["reviewed"]["defect"] == of_b  # b's reviewed parts, none of a's
    assert regs["b"].current() == result["version"] and regs["b"].list()[-1]["parent"] == "b-1"
    assert {p.relative_to(regs["a"].root): p.read_bytes() for p in regs["a"].root.rglob("*") if p.is_file()} == \
        a_before and regs["a"].current() == "a-1"
    assert (out / "state-b.json").exists() and not (out / "state.json").exists()
