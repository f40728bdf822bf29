"""Projects: sets of comparable runs."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from losswatch.server.api.schemas import PROJECT_PATTERN, ProjectRead
from losswatch.server.errors import InvalidRequest, project_not_found
from losswatch.server.storage.models import Project, Run

_NAME = re.compile(PROJECT_PATTERN)


def now() -> datetime:
    return datetime.now(UTC)


def utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidRequest(
            "a project name is 1-200 characters of letters, digits, '_', '.', '-', starting with a "
            f"letter or digit; got {name[:80]!r}",
            code="invalid_project_name",
        )
    return name


def get_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise project_not_found(name)
    return project


def project_key(session: Session, name: str) -> tuple[int, str]:
    """The project's (id, name), without loading the row; 404 when there is none."""
    row = session.execute(select(Project.id, Project.name).where(Project.name == name)).first()
    if row is None:
        raise project_not_found(name)
    return row[0], row[1]


def get_or_create_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == check_name(name)))
    if project is not None:
        return project
    try:
        with session.begin_nested():
            project = Project(name=name, created_at=now())
            session.add(project)
    except IntegrityError:  # another process created it first
        project = session.scalar(select(Project).where(Project.name == name))
        assert project is not None
    return project


def list_projects(session: Session, only: int | None = None) -> list[ProjectRead]:
    counts = (
        select(Run.project_id, func.count().label("n")).group_by(Run.project_id).subquery()
    )
    stmt = (
        select(Project, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.project_id == Project.id)
        .order_by(Project.name)
    )
    if only is not None:
        stmt = stmt.where(Project.id == only)
    return [
        ProjectRead(name=p.name, created_at=utc(p.created_at), runs=n) for p, n in session.execute(stmt)
    ]
