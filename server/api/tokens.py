"""A project's API tokens (admin scope): make one, list them, revoke one.

A token made here with a token never outranks it (scope) nor outlives it (expiry), and revoking a
token revokes the tokens it made. A revocation reaches every server process within
``LOSSWATCH_AUTH_CACHE_SECONDS`` (1 s by default): that is how long a process trusts a verified token.
Every creation and revocation goes to the ``losswatch.audit`` log with who asked (never a token).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Path, Request

from losswatch.server.api.deps import API_ERRORS, DB, AdminProject, Caller
from losswatch.server.api.schemas import TokenCreate, TokenCreated, TokenList, TokenRead
from losswatch.server.services import tokens

audit = logging.getLogger("losswatch.audit")

router = APIRouter(prefix="/api/v1/projects", tags=["tokens"], responses=API_ERRORS)


@router.post("/{project}/tokens", response_model=TokenCreated, status_code=201,
             summary="Make a token for this project (admin; never above the caller's scope or expiry)")
def create_token(project: AdminProject, body: TokenCreate, request: Request, db: DB, caller: Caller) -> TokenCreated:
    with db.write() as s:
        minted = tokens.mint_token(s, project.name, body.scope, body.name, expires_at=body.expires_at, parent=caller)
    made = TokenCreated(**{field: minted[field] for field in TokenCreated.model_fields})
    audit.warning("token #%d %r (%s on project %r) made by %s from %s", made.id, made.name, made.scope, project.name,
                  caller.describe(), request.client.host if request.client else "?")
    return made


@router.get("/{project}/tokens", response_model=TokenList, summary="List this project's tokens (admin; no secrets)")
def list_tokens(project: AdminProject, db: DB) -> TokenList:
    with db.read() as s:
        return TokenList(tokens=[TokenRead(**t) for t in tokens.list_tokens(s, project.id)])


@router.delete("/{project}/tokens/{token_id}", response_model=TokenRead,
               summary="Revoke a token and the tokens it made (admin; every server process within 1 s)")
def revoke_token(project: AdminProject, token_id: int = Path(ge=1, le=2**31 - 1), *, request: Request, db: DB,
                 caller: Caller) -> TokenRead:
    with db.write() as s:
        gone = TokenRead(**tokens.revoke_token(s, token_id, project.id))
    audit.warning("token #%d %r of project %r revoked by %s from %s", gone.id, gone.name, project.name,
                  caller.describe(), request.client.host if request.client else "?")
    return gone
