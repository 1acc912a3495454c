"""Review-station accounts, sessions and the audit trail, in their own SQLite file beside the failure log.

    >>> users = Accounts(default_accounts("runs/line/failures"))   # runs/line/failures.accounts.db
    >>> users = Accounts("/var/lib/inspection/accounts/review.db")
    >>> users.add_user("ana", "a long passphrase", role="lead")
    >>> token, csrf = users.login("ana", "a long passphrase")

Passwords are stored as scrypt hashes (salted, stdlib); a session is a random token whose SHA-256 alone is
stored, with its own CSRF token and an expiry. Roles: `operator` reviews; `lead` also manages users and
settings and exports datasets. User names are compared NFKC-normalized and case-folded (no look-alike twins).

Failed logins: five from one client address within five minutes hold that address off for the rest of the
window (an attacker locks out itself, never the account's owner); five on one account within five minutes
slow every further attempt on it by a second (a back-off, not a lock, so nobody can keep a user out), the
owner's own successful login included. An attempt counts as failed from the moment it is let through until
its password proves right, so parallel guesses cannot slip past the count. Unknown names get the same answer
and cost the same time as a wrong password.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from inspection.core.errors import UserError

ROLES = ("operator", "lead")
LEGACY_NAME = "review.db"      # where accounts lived before: inside the log folder
SESSION_S = 12 * 3600          # a shift
WINDOW_S = 300                 # failed logins count for this long
ADDRESS_LIMIT = 5              # failures from one address in the window → that address is held off
ACCOUNT_SLOW_AFTER, ACCOUNT_DELAY_S = 5, 1.0  # failures on one account in the window → each attempt waits
MIN_PASSWORD = 8
SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, pw_hash TEXT NOT NULL, created REAL NOT NULL,
    failed INTEGER NOT NULL DEFAULT 0, locked_until REAL NOT NULL DEFAULT 0, active INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES users (name), csrf TEXT NOT NULL,
    created REAL NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, user TEXT, action TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class AuthError(UserError, ValueError):
    """A refused login or account change; the message is safe to show."""


@dataclass
class User:
    name: str
    role: str
    csrf: str = ""

    @property
    def lead(self) -> bool:
        return self.role == "lead"


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    n, r, p = 2**14, 8, 1
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


_DUMMY_HASH = hash_password(secrets.token_hex(16))  # checked for unknown names: one scrypt, as for a real user


def _now() -> float:
    return time.time()


def normalize_name(name: str) -> str:
    """The form a user name is stored and compared in: NFKC, case-folded, trimmed."""
    return unicodedata.normalize("NFKC", str(name)).casefold().strip()


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AccountsError(UserError, ValueError):
    """An accounts file that is not used (planted where a station can write); the message says what to do."""


class Accounts:
    def __init__(self, db_path: str | Path):
        if str(db_path) != ":memory:":  # password hashes: readable by the owner only (0600), from the start
            os.close(os.open(db_path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(db_path, 0o600)
        self.db = sqlite3.connect(db_path, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._failures: dict[str, list[float]] = {}  # "addr:<ip>" / "user:<name>" → times of recent failures
        self._account_locks: dict[str, threading.Lock] = {}

    # -- users ---------------------------------------------------------------------------------------------------
    def add_user(self, name: str, password: str, role: str = "operator", by: str | None = None) -> None:
        name = normalize_name(name)
        if not name or len(name) > 64 or not all(c.isalnum() or c in "._-@" for c in name):
            raise AuthError(f"user name {name!r}: 1-64 letters, digits or . _ - @")
        if role not in ROLES:
            raise AuthError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if len(password) < MIN_PASSWORD:
            raise AuthError(f"password for {name}: at least {MIN_PASSWORD} characters")
        with self._lock, self.db:
            if self.db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise AuthError(f"user {name} exists already")
            self.db.execute("INSERT INTO users (name, role, pw_hash, created) VALUES (?, ?, ?, ?)",
                            (name, role, hash_password(password), time.time()))
            self._audit(by, "add user", {"user": name, "role": role})

    def set_password(self, name: str, password: str, by: str | None = None) -> None:
        name = self._stored_name(name)
        if len(password) < MIN_PASSWORD:
            raise AuthError(f"password for {name}: at least {MIN_PASSWORD} characters")
        with self._lock, self.db:
            if not self.db.execute("UPDATE users SET pw_hash = ?, failed = 0, locked_until = 0 WHERE name = ?",
                                   (hash_password(password), name)).rowcount:
                raise AuthError(f"no user {name}")
            self.db.execute("DELETE FROM sessions WHERE user = ?", (name,))
            self._audit(by, "set password", {"user": name})

    def set_active(self, name: str, active: bool, by: str | None = None) -> None:
        name = self._stored_name(name)
        with self._lock, self.db:
            if not self.db.execute("UPDATE users SET active = ? WHERE name = ?", (int(active), name)).rowcount:
                raise AuthError(f"no user {name}")
            if not active:
                self.db.execute("DELETE FROM sessions WHERE user = ?", (name,))
            self._audit(by, "enable user" if active else "disable user", {"user": name})

    def users(self) -> list[dict]:
        rows = self.db.execute("SELECT name, role, created, active, locked_until FROM users ORDER BY name")
        return [dict(zip(("name", "role", "created", "active", "locked_until"), r)) for r in rows]

    # -- sessions ------------------------------------------------------------------------------------------------
    def _stored_name(self, name: str) -> str:
        """The account's name as stored: the normalized form, or an older account's exact name."""
        key = normalize_name(name)
        row = self.db.execute("SELECT name FROM users WHERE name IN (?, ?) ORDER BY name = ? DESC", (key, name, key))
        return (row.fetchone() or (key,))[0]

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, ()) if now - t < WINDOW_S]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def _account_lock(self, name: str) -> threading.Lock:
        with self._lock:
            if len(self._account_locks) > 10_000:  # a flood of names: forget the idle ones
                self._account_locks = {k: v for k, v in self._account_locks.items() if v.locked()}
            return self._account_locks.setdefault(name, threading.Lock())

    def login(self, name: str, password: str, address: str = "local") -> tuple[str, str]:
        """(session token, CSRF token); AuthError with one message for any wrong name or password. Blocking
        (scrypt, the back-off): call it off an event loop.

        Each attempt is counted as a failure before its password is checked, in the same locked step that
        decides whether it may be checked at all, and taken back only when the password is right: parallel
        guesses see each other, so no more than ADDRESS_LIMIT are checked per address and window, and past
        ACCOUNT_SLOW_AFTER an account's guesses queue behind its back-off. A right password takes back only
        its own attempt: the account's earlier failures keep counting, so a burst right after the owner's
        login is slowed as before it."""
        name, now = self._stored_name(name), _now()
        addr, account = f"addr:{address}", f"user:{name}"
        with self._lock:
            held = self._recent(addr, now)
            if len(held) >= ADDRESS_LIMIT:
                raise AuthError(f"too many failed logins from this address; try again in "
                                f"{int(held[0] + WINDOW_S - now) // 60 + 1} min")
            slow = len(self._recent(account, now)) >= ACCOUNT_SLOW_AFTER
            for key in (addr, account):
                self._failures.setdefault(key, []).append(now)
            if len(self._failures) > 10_000:  # a flood of names or addresses: keep the newest
                for key in sorted(self._failures, key=lambda k: self._failures[k][-1])[:5_000]:
                    if key not in (addr, account):
                        del self._failures[key]
        with self._account_lock(name) if slow else contextlib.nullcontext():
            if slow:  # one guess at a time per account, each after the back-off: parallel guesses queue up
                time.sleep(ACCOUNT_DELAY_S)
            row = self.db.execute("SELECT pw_hash, active FROM users WHERE name = ?", (name,)).fetchone()
            ok = check_password(password, row[0] if row else _DUMMY_HASH) and row is not None and bool(row[1])
        if not ok:
            if row is not None:
                with self._lock, self.db:
                    self.db.execute("UPDATE users SET failed = failed + 1 WHERE name = ?", (name,))
                    self._audit(name, "login refused", {"address": address})
            raise AuthError("wrong user name or password")
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self._lock, self.db:
            for key in (addr, account):  # this attempt was no failure after all
                with contextlib.suppress(KeyError, ValueError):
                    self._failures[key].remove(now)
            self.db.execute("UPDATE users SET failed = 0, locked_until = 0 WHERE name = ?", (name,))
            self.db.execute("DELETE FROM sessions WHERE expires < ?", (now,))
            self.db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                            (_sha(token), name, csrf, now, now + SESSION_S))
            self._audit(name, "login", {"address": address})
        return token, csrf

    def session(self, token: str | None) -> User | None:
        if not token:
            return None
        row = self.db.execute("SELECT u.name, u.role, s.csrf FROM sessions s JOIN users u ON u.name = s.user "
                              "WHERE s.token_hash = ? AND s.expires > ? AND u.active = 1",
                              (_sha(token), time.time())).fetchone()
        return None if row is None else User(*row)

    def logout(self, token: str | None) -> None:
        if token:
            with self._lock, self.db:
                user = self.db.execute("SELECT user FROM sessions WHERE token_hash = ?", (_sha(token),)).fetchone()
                self.db.execute("DELETE FROM sessions WHERE token_hash = ?", (_sha(token),))
                if user:
                    self._audit(user[0], "logout", {})

    # -- settings and audit --------------------------------------------------------------------------------------
    def setting(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_setting(self, key: str, value, by: str) -> None:
        with self._lock, self.db:
            self.db.execute("INSERT INTO settings VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                            (key, json.dumps(value)))
            self._audit(by, "setting", {key: value})

    def audit(self, user: str | None, action: str, detail: dict) -> None:
        with self._lock, self.db:
            self._audit(user, action, detail)

    def _audit(self, user, action, detail) -> None:
        self.db.execute("INSERT INTO audit (ts, user, action, detail) VALUES (?, ?, ?, ?)",
                        (time.time(), user, action, json.dumps(detail)))

    def audit_log(self, limit: int = 200) -> list[dict]:
        rows = self.db.execute("SELECT ts, user, action, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [{"ts": ts, "user": u, "action": a, "detail": json.loads(d)} for ts, u, a, d in rows]

    def close(self) -> None:
        self.db.close()


def default_accounts(log: str | Path) -> Path:
    """The accounts file when none is named: beside the failure-log folder, never inside it (a station that can
    write the log folder must not reach the password hashes, nor plant accounts). An accounts file at the old
    place, review.db inside the log folder, is not taken over: anyone who can write the log folder could have
    put it there; AccountsError says how to move it after checking it."""
    log = Path(log)
    path = log.parent / f"{log.name}.accounts.db"
    old = log / LEGACY_NAME
    if old.exists() and not path.exists():
        raise AccountsError(
            f"{old}: an accounts file inside the failure-log folder (where earlier versions kept it). It is not "
            f"used: any station that can write that folder could have planted it. Check its users "
            f"(sqlite3 {old} 'SELECT name, role FROM users'), then move it beside the folder: mv {old} {path}; "
            f"or delete it and add the users again (inspection users add NAME --role lead --log {log})")
    return path
