"""Statistics of the failure log: the runners' daily verdict tallies (the fail rates' denominators) and the
per-day, per-station figures the review station shows.
"""
from __future__ import annotations

import time


class Statistics:
    """Part of SQLStore (uses its _rows, _transaction and _lock)."""

    def tally(self, station: str, counts: dict[tuple, int]) -> None:
        """Add the runner's verdict counts, {(day 'YYYY-MM-DD', verdict[, product]): n}: the denominators of the
        fail rates (without a product: the station's only one, "")."""
        with self._lock, self._transaction() as ex:
            for key, n in counts.items():
                day, verdict, product = (*key, "")[:3]
                if n:
                    ex("INSERT INTO tallies (day, station, product, verdict, n) VALUES (?, ?, ?, ?, ?) ON CONFLICT "
                       "(day, station, product, verdict) DO UPDATE SET n = tallies.n + excluded.n",
                       (day, station, product, verdict, n))

    def daily(self, days: int = 30) -> list[dict]:
        """Per station, product and day, newest first: parts inspected, failed, logged, confirmed, false alarms,
        rates (product "" for stations without products)."""
        since = time.strftime("%Y-%m-%d", time.localtime(time.time() - days * 86400))
        out: dict[tuple[str, str, str], dict] = {}

        def row(day, station, product):
            return out.setdefault((day, station, product), {
                "day": day, "station": station, "product": product, "inspected": 0, "fail": 0, "review": 0,
                "error": 0, "logged": 0, "confirmed": 0, "false_alarm": 0, "unsure": 0, "unreviewed": 0})
        self.damaged_tallies = 0
        for t in self._rows("SELECT day, station, product, verdict, n FROM tallies WHERE day >= ?", (since,)):
            try:
                n = int(t["n"])
            except (ValueError, TypeError):  # a row someone else wrote: counted, never a broken page
                self.damaged_tallies += 1
                continue
            r = row(str(t["day"]), str(t["station"]), str(t["product"]))
            r["inspected"] += n
            if t["verdict"] in ("fail", "review", "error"):
                r[t["verdict"]] += n
        for f in self._rows("SELECT day, station, product, review_status, COUNT(*) AS n FROM failures "
                            "WHERE day >= ? GROUP BY day, station, product, review_status", (since,)):
            r = row(str(f["day"]), str(f["station"]), str(f["product"]))
            r["logged"] += int(f["n"])
            known = f["review_status"] in ("confirmed", "false_alarm", "unsure")
            status = f["review_status"] if known else "unreviewed"
            r[status] += int(f["n"])
        for r in out.values():
            reviewed = r["confirmed"] + r["false_alarm"]
            r["fail_rate"] = r["fail"] / r["inspected"] if r["inspected"] else None
            r["false_alarm_rate"] = r["false_alarm"] / reviewed if reviewed else None
        return sorted(out.values(), key=lambda r: (r["day"], r["station"], r["product"]), reverse=True)

