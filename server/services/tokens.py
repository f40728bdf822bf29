"""API tokens: one project each, a scope, stored as a SHA-256 digest.

A token reads ``lw_<lookup>_<secret>``: the lookup part finds the row, the digest of the whole
token is compared in constant time. Tokens are 256-bit random, so a fast hash is enough.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from losswatch.server.models import TOKEN_SCOPES, Project, Token
from losswatch.server.services.projects import get_or_create_project, now

SCOPE_RANK = {scope: i for i, scope in enumerate(TOKEN_SCOPES)}


@dataclass(frozen=True)
class Principal:
    """Who is calling: a project's token, or the local user of a server without auth."""

    project_id: int | None  # None: every project (auth off)
    project: str | None
    scope: str
    token_id: int | None = None  # the token's row id and label, for audit lines (never the token)
    token_name: str | None = None

    def allows(self, scope: str) -> bool:
        return SCOPE_RANK[self.scope] >= SCOPE_RANK[scope]

    def describe(self) -> str:
        """Who, for a log line: the token's id, label, project and scope; never the token itself."""
        if self.token_id is None:
            return "the local user (auth off)"
        return f"token #{self.token_id} {self.token_name!r} ({self.scope} on project {self.project!r})"


LOCAL = Principal(project_id=None, project=None, scope="admin")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, project_name: str, scope: str, name: str = "api") -> tuple[Token, str]:
    if scope not in SCOPE_RANK:
        raise ValueError(f"scope must be one of {', '.join(TOKEN_SCOPES)}")
    project = get_or_create_project(session, project_name)
    lookup = secrets.token_hex(6)
    plaintext = f"lw_{lookup}_{secrets.token_urlsafe(32)}"
    token = Token(project_id=project.id, name=name, scope=scope, lookup=lookup,
                  digest=_digest(plaintext), created_at=now())
    session.add(token)
    session.flush()
    return token, plaintext


def authenticate(session: Session, plaintext: str) -> Principal | None:
    parts = plaintext.split("_")
    if len(parts) < 3 or parts[0] != "lw" or len(parts[1]) != 12:
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
    return Principal(project_id=token.project_id, project=project, scope=token.scope, token_id=token.id,
                     token_name=token.name)
