"""API tokens: one project each, a scope, an optional expiry, stored as a SHA-256 digest.

A token reads ``lw_<lookup>_<secret>``: the lookup part finds the row, the digest of the whole
token is compared in constant time. Tokens are 256-bit random, so a fast hash is enough.

A token minted with another token (``POST /projects/{p}/tokens``) records that parent: it never
outranks it (its scope is at most the parent's) nor outlives it (its expiry is at most the parent's,
and revoking a token revokes every token minted from it, in the same transaction).

:class:`AuthCache` keeps only *verified* tokens (keyed by their digest, never the token), bounded
(LRU) and for at most ``ttl`` seconds, so a revocation made through any server process is seen by
every other one within ``ttl`` (1 s by default).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from losswatch.server.errors import Forbidden, InvalidRequest, NotFound
from losswatch.server.services.projects import get_or_create_project, now
from losswatch.server.storage.models import TOKEN_SCOPES, Project, Token

SCOPE_RANK = {scope: i for i, scope in enumerate(TOKEN_SCOPES)}
TOKEN_LENGTH_MAX = 128  # real tokens are 59 characters; anything much longer is not one


@dataclass(frozen=True)
class Principal:
    """Who is calling: a project's token, or the local user of a server without auth."""

    project_id: int | None  # None: every project (auth off)
    project: str | None
    scope: str
    token_id: int | None = None  # the token's row id and label, for audit lines (never the token)
    token_name: str | None = None
    expires_at: datetime | None = None

    def allows(self, scope: str) -> bool:
        return SCOPE_RANK[self.scope] >= SCOPE_RANK[scope]

    def expired(self, at: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (at or now())

    def describe(self) -> str:
        """Who, for a log line: the token's id, label, project and scope; never the token itself."""
        if self.token_id is None:
            return "the local user (auth off)"
        return f"token #{self.token_id} {self.token_name!r} ({self.scope} on project {self.project!r})"


LOCAL = Principal(project_id=None, project=None, scope="admin")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


def create_token(session: Session, project_name: str, scope: str, name: str = "api", *,
                 expires_at: datetime | None = None, parent: Principal | None = None) -> tuple[Token, str]:
    """Make a token. With ``parent`` (the token of the caller who mints it), the new token's scope
    must not exceed the parent's and its expiry defaults to, and may not pass, the parent's."""
    if scope not in SCOPE_RANK:
        raise InvalidRequest(f"scope must be one of {', '.join(TOKEN_SCOPES)}", code="invalid_scope")
    expires_at = _utc(expires_at)
    if expires_at is not None and expires_at <= now():
        raise InvalidRequest("expires_at must be in the future", code="invalid_expiry",
                             details=[{"loc": ["body", "expires_at"], "msg": "in the past"}])
    parent_id = None
    if parent is not None and parent.token_id is not None:
        if not parent.allows(scope):
            raise Forbidden(f"a {parent.scope!r} token cannot make a {scope!r} token (a token never outranks "
                            "the token that made it)")
        if parent.expires_at is not None:
            if expires_at is not None and expires_at > parent.expires_at:
                raise InvalidRequest(
                    f"expires_at must not be later than the expiry of the token that makes it "
                    f"({parent.expires_at.isoformat()})", code="invalid_expiry",
                    details=[{"loc": ["body", "expires_at"], "msg": "after the parent token's expiry"}])
            expires_at = expires_at or parent.expires_at
        parent_id = parent.token_id
    project = get_or_create_project(session, project_name)
    lookup = secrets.token_hex(6)
    plaintext = f"lw_{lookup}_{secrets.token_urlsafe(32)}"
    token = Token(project_id=project.id, name=name, scope=scope, lookup=lookup,
                  digest=_digest(plaintext), created_at=now(), expires_at=expires_at, parent_id=parent_id)
    session.add(token)
    session.flush()
    return token, plaintext


def authenticate(session: Session, plaintext: str) -> Principal | None:
    """The principal of a valid token: known, matching digest, not revoked, not expired."""
    parts = plaintext.split("_")
    if len(plaintext) > TOKEN_LENGTH_MAX or len(parts) < 3 or parts[0] != "lw" or len(parts[1]) != 12:
        return None
    row = session.execute(
        select(Token, Project.name)
        .join(Project, Project.id == Token.project_id)
        .where(Token.lookup == parts[1])
    ).first()
    if row is None:
        _digest(plaintext)  # same work either way
        return None
    token, project = row
    if not hmac.compare_digest(token.digest, _digest(plaintext)) or token.revoked_at is not None:
        return None
    principal = Principal(project_id=token.project_id, project=project, scope=token.scope, token_id=token.id,
                          token_name=token.name, expires_at=_utc(token.expires_at))
    return None if principal.expired() else principal


def mint_token(session: Session, project_name: str, scope: str, name: str, *,
               expires_at: datetime | None = None, parent: Principal | None = None) -> dict[str, Any]:
    """:func:`create_token` for the API, as plain data: the token as lists show it, plus its text
    (shown once)."""
    token, plaintext = create_token(session, project_name, scope, name, expires_at=expires_at, parent=parent)
    return {**describe_token(token, project_name), "token": plaintext}


def describe_token(token: Token, project: str) -> dict[str, Any]:
    """A token as lists show it: never its secret, only the lookup part that appears in its text."""
    return {
        "id": token.id, "project": project, "name": token.name, "scope": token.scope,
        "prefix": f"lw_{token.lookup}_", "created_at": _utc(token.created_at),
        "expires_at": _utc(token.expires_at), "revoked_at": _utc(token.revoked_at),
        "parent_id": token.parent_id,
    }


def list_tokens(session: Session, project_id: int | None = None, *,
                include_revoked: bool = True) -> list[dict[str, Any]]:
    stmt = select(Token, Project.name).join(Project, Project.id == Token.project_id).order_by(Token.id)
    if project_id is not None:
        stmt = stmt.where(Token.project_id == project_id)
    if not include_revoked:
        stmt = stmt.where(Token.revoked_at.is_(None))
    return [describe_token(t, p) for t, p in session.execute(stmt)]


def revoke_token(session: Session, token_id: int, project_id: int | None = None) -> dict[str, Any]:
    """Revoke a token and every token minted from it (transitively), in this transaction.
    Revoking a revoked token is harmless. 404 for a token of another project."""
    row = session.execute(
        select(Token, Project.name).join(Project, Project.id == Token.project_id).where(Token.id == token_id)
    ).first()
    if row is None or (project_id is not None and row[0].project_id != project_id):
        raise NotFound(f"no token #{token_id}", code="token_not_found")
    t = now()
    frontier = [token_id]
    while frontier:
        session.execute(update(Token).where(Token.id.in_(frontier), Token.revoked_at.is_(None)).values(revoked_at=t))
        frontier = list(session.scalars(select(Token.id).where(Token.parent_id.in_(frontier),
                                                                 Token.revoked_at.is_(None))))
    session.flush()
    session.refresh(row[0])
    return describe_token(row[0], row[1])


class AuthCache:
    """Verified tokens only, keyed by the SHA-256 of the token, least recently used out first,
    each entry kept ``ttl`` seconds at most (and never past the token's expiry). An unknown,
    malformed or revoked token is never stored, so junk tokens cannot grow it."""

    def __init__(self, size: int = 1024, ttl: float = 1.0) -> None:
        self.size, self.ttl = size, ttl
        self._entries: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def get(self, token: str) -> Principal | None:
        k = self.key(token)
        with self._lock:
            hit = self._entries.get(k)
            if hit is None:
                return None
            if hit[0] <= time.monotonic() or hit[1].expired():
                del self._entries[k]
                return None
            self._entries.move_to_end(k)
            return hit[1]

    def put(self, token: str, principal: Principal) -> None:
        k = self.key(token)
        with self._lock:
            self._entries[k] = (time.monotonic() + self.ttl, principal)
            self._entries.move_to_end(k)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
