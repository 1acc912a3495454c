"""The station's products: the one prepared, their model packages loaded ahead, and the switch between two parts.

    products = Products(cfg, load, metrics, log)    # load(package folder) -> Runtime, warmed up
    products.prepare("housing-b")                   # 0, or a command error of plc/handshake.py (nothing changed)
    rt = products.runtime(frame.product)            # the model that judges a frame of that product

A station without `products:` has one product, "", with the station's package and source.roi; nothing can
switch it. The packages of the `models_loaded` products prepared most recently stay loaded (the prepared one
always); at start the start product's and then the others' in their order. A switch to a product whose package
is not loaded loads it first (benchmarks/product_switch.py measures both). The switch itself is made by the
capture thread between two frames (capture.py): the camera takes the product's settings, then every frame it
takes is stamped with the product and its ROI. The registry's hot reload works per product (`reload`).
torch-free.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from inspection.deploy.line.genicam import GenICamConfig
from inspection.deploy.line.station import StationConfig
from inspection.deploy.package import PackageError
from inspection.deploy.plc.handshake import NO_PRODUCT, OK, PREPARE_FAILED, UNKNOWN_PRODUCT
from inspection.deploy.registry import resolve_package
from inspection.deploy.runtime import Runtime


@dataclass
class Product:
    """One product as the station judges it: its settings from the config, the station's where it has none."""

    id: str                          # "" for the one product of a station without products
    number: int                      # Modbus product number; 0: none
    package: str                     # model package folder or pointer file
    roi: list | None                 # station ROI [x, y, w, h]; None: the whole frame
    review_band: float | None        # None: the package's
    camera: GenICamConfig | None     # the camera's settings while it is prepared (source kind genicam)


def station_products(cfg: StationConfig) -> list[Product]:
    """The configured products with the station's settings filled in, or the station's one implicit product."""
    if not cfg.products:
        return [Product("", 0, cfg.package, cfg.source.roi, None, None)]
    out = []
    for p in cfg.products:
        g = p.genicam
        own = {"exposure_us": g.exposure_us or None, "gain": g.gain, "roi": g.roi,
               "pixel_format": g.pixel_format or None}
        camera = dataclasses.replace(cfg.source.genicam, **{k: v for k, v in own.items() if v is not None})
        out.append(Product(p.id, p.number, p.package or cfg.package, cfg.source.roi if p.roi is None else p.roi,
                           p.review_band, camera if cfg.source.kind == "genicam" else None))
    return out


def package_key(path: str | Path) -> tuple:
    """What tells a package apart from the one loaded before: its folder and its metadata's time and size."""
    root = resolve_package(path)
    try:
        st = (root / "metadata.json").stat()
        return (str(root.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        return (str(root), None, None)


class Products:
    """The products, the prepared one (`current`; None after an unprepare) and their loaded models."""

    def __init__(self, cfg: StationConfig, load: Callable[[Path], Runtime], metrics, log):
        self.cfg, self._load, self.metrics, self.log = cfg, load, metrics, log
        self.all = station_products(cfg)
        self.by_id = {p.id: p for p in self.all}
        self.current: Product | None = self.by_id[cfg.product] if cfg.product else self.all[0]
        self.last: Product = self.current  # the product prepared most recently (current, or the one unprepared)
        self.models: collections.OrderedDict[str, Runtime] = collections.OrderedDict()  # oldest use first
        self.keys: dict[str, tuple] = {}  # package key of each loaded model (hot reload)
        self.lock = threading.RLock()     # loads and evictions
        self.switching = threading.Lock()  # one prepare at a time
        self.capture = None               # makes the switch between two frames (set by the runner)
        for p in [self.current, *[q for q in self.all if q is not self.current]][:cfg.models_loaded]:
            try:
                self.runtime(p.id)
            except PackageError as exc:  # at start: say whose package it is
                raise PackageError(f"product {p.id}: {exc}" if p.id else str(exc)) from None
        self.runtime(self.current.id)     # the prepared product's model: the most recently used

    # -- what the PLC and the outputs ask ------------------------------------------------------------------------
    def known(self, product_id: str) -> bool:
        """A product of this station's `products:` (the implicit one of a station without them is not)."""
        return bool(self.cfg.products) and product_id in self.by_id

    def by_number(self, number: int) -> str | None:
        return next((p.id for p in self.all if p.number and p.number == number), None)

    def version(self, product_id: str) -> str:
        """The model version its parts are judged with (its package loaded)."""
        return self.runtime(product_id).version

    # -- models --------------------------------------------------------------------------------------------------
    def runtime(self, product_id: str) -> Runtime:
        """The product's model, loaded now if it is not (then the least recently used beyond models_loaded goes,
        never the prepared product's). KeyError for a product the station does not have."""
        with self.lock:
            rt = self.models.get(product_id)
            if rt is not None:
                self.models.move_to_end(product_id)
                return rt
            product = self.by_id[product_id]
        key = package_key(product.package)  # loaded outside the lock: the other products are judged meanwhile
        rt = self._own(self._load(resolve_package(product.package)), product)
        with self.lock:
            if product_id in self.models:  # another thread loaded it meanwhile
                self.models.move_to_end(product_id)
                return self.models[product_id]
            self.models[product_id], self.keys[product_id] = rt, key
            self.metrics.inc("model_loads_total")
            self._trim(keep=product_id)
            return rt

    def _trim(self, keep: str | None = None) -> None:
        """Unload the least recently used models beyond models_loaded; never the prepared product's (after an
        unprepare: the one prepared last), nor `keep` (being prepared). Lock held."""
        for old in [pid for pid in self.models if pid not in (keep, self.last.id)]:
            if len(self.models) <= self.cfg.models_loaded:
                break
            del self.models[old], self.keys[old]

    @staticmethod
    def _own(rt: Runtime, product: Product) -> Runtime:
        if product.review_band is not None:
            rt.review_band = product.review_band
        return rt

    def reload(self) -> None:
        """Load the new package of every loaded product whose package changed (a promotion); it judges from the
        next batch on. A package that cannot be loaded is refused (counted, logged); the old model runs on."""
        with self.lock:
            loaded = list(self.keys.items())
        for product_id, key in loaded:
            product = self.by_id[product_id]
            now = package_key(product.package)
            if now == key or now[1] is None:
                continue
            try:
                rt = self._own(self._load(resolve_package(product.package)), product)
            except Exception as exc:  # noqa: BLE001 - a bad new package must never stop the line
                self.metrics.inc("model_reload_failures_total")
                self.log.warning(f"reload: new package at {resolve_package(product.package)} refused: {exc}")
            else:
                with self.lock:
                    if product_id in self.models:
                        self.models[product_id] = rt
                        self.metrics.inc("model_reloads_total")
                        self.log.info(f"reload: model {rt.version} ready" + (f" for product {product_id}" if
                                                                              product_id else ""))
            with self.lock:
                if product_id in self.keys:
                    self.keys[product_id] = now

    # -- switching -------------------------------------------------------------------------------------------------
    def prepare(self, product_id: str) -> int:
        """Make product_id the prepared product: its model loaded, the camera set, the frames after the switch
        stamped with it. 0, or UNKNOWN_PRODUCT / PREPARE_FAILED; on an error the prepared product stays."""
        if not self.known(product_id):
            return UNKNOWN_PRODUCT
        product = self.by_id[product_id]
        with self.switching:
            try:
                self.runtime(product_id)
            except Exception as exc:  # noqa: BLE001 - a package that cannot be loaded is refused, the line goes on
                self.log.error(f"product {product_id}: model package {product.package} cannot be loaded ({exc}); "
                               f"{self._prepared()} stays prepared")
                return PREPARE_FAILED
            try:
                self._switch(product)
            except Exception as exc:  # noqa: BLE001 - SourceError naming the setting the camera refused
                self.log.error(f"product {product_id}: not prepared ({exc}); {self._prepared()} stays prepared")
                return PREPARE_FAILED
        self.metrics.inc("product_switches_total")
        self.log.info(f"product {product_id} prepared: model {self.models[product_id].version}")
        return OK

    def unprepare(self, product_id: str) -> int:
        """No product prepared (a PLC must prepare one before the next trigger); NO_PRODUCT when product_id is not
        the prepared one."""
        if not self.known(product_id):
            return UNKNOWN_PRODUCT
        with self.switching:
            if self.current is None or self.current.id != product_id:
                return NO_PRODUCT
            self._switch(None)
        self.log.info(f"product {product_id} unprepared")
        return OK

    def _switch(self, product: Product | None) -> None:
        if self.capture is not None:
            self.capture.switch(product)  # between two frames; it calls switched()
        else:
            self.switched(product)

    def switched(self, product: Product | None) -> None:
        """The switch is made: frames taken from now on are this product's (None: no product prepared)."""
        self.current = product
        if product is not None:
            self.last = product
        with self.lock:
            self._trim()

    def _prepared(self) -> str:
        return f"product {self.current.id}" if self.current is not None else "no product"
