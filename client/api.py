"""``losswatch.Api``: read projects, runs, curves and alerts back into Python (a notebook, a script).

::

    import losswatch
    api = losswatch.Api()                                    # $LOSSWATCH_URL / $LOSSWATCH_TOKEN
    best = api.runs("detector", sort="-max:val/mAP50-95", limit=5)
    best.to_pandas()                                         # config.* and last:/min:/max: columns
    h = best[0].history(["train/loss", "val/mAP50-95"])      # every raw point, paged for you
    h["train/loss"]["value"]                                 # a numpy float64 array (NaN/±Inf exact)
    best[0].history(["train/loss"], buckets=1000).to_pandas()  # min/max/last per bucket

Standard library only: numpy is used for the arrays, pandas for ``to_pandas()`` and orjson to parse
answers when they are installed (imported on first use, never by ``import losswatch``); without numpy
the arrays are lists.
Every call is one or more requests to the same public HTTP API the dashboard reads
(``docs/api.md``); paging is done here. Errors are the client's own
(:class:`~losswatch.client.errors.TransportError` when no answer came,
:class:`~losswatch.client.errors.ServerError` with ``status``/``code``/``message`` when the server
refused), never a raw ``http.client`` or ``json`` exception.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from losswatch.client import settings, wire
from losswatch.client.errors import ServerError, TransportError
from losswatch.client.transport import HTTPTransport, Transport

__all__ = ["Api", "ApiRun", "RunList", "History"]

API = "/api/v1"
RUN_PAGE = 10_000  # the REST list's largest page: one sort per 10,000 runs, not one per 1,000
POINT_PAGE = 100_000  # the raw points route's largest page
QUERY_KEYS = 100  # keys per downsampled query


def _json_loads() -> Any:
    """orjson's parser when it is installed (it comes with the server extra; 4-5x faster on a page
    of 100,000 points), else the standard library's."""
    try:
        import orjson
    except ImportError:
        return json.loads
    return orjson.loads


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise ImportError("losswatch: to_pandas() needs pandas: pip install pandas") from None
    return pandas


def _floats(values: list[Any]) -> Any:
    """Wire values (numbers, "NaN", "Infinity", "-Infinity"; null for "no value") as float64."""
    np = _numpy()
    if np is not None:
        try:
            return np.array(values, dtype=np.float64)  # numpy reads the three spellings itself
        except (TypeError, ValueError):
            pass
    return [float("nan") if v is None else wire.decode_value(v) if isinstance(v, str) else float(v) for v in values]


def _ints(values: list[Any]) -> Any:
    np = _numpy()
    return np.array(values, dtype=np.int64) if np is not None else list(values)


def _concat(parts: list[Any]) -> Any:
    np = _numpy()
    if np is not None:
        return np.concatenate(parts) if len(parts) != 1 else parts[0]
    return [v for p in parts for v in p]


def _flat(config: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, name))
        else:
            out[name] = value
    return out


class Api:
    """A read client of one losswatch server.

    ``url`` and ``token`` default to ``$LOSSWATCH_URL`` (else ``http://127.0.0.1:8000``) and
    ``$LOSSWATCH_TOKEN``; ``project`` (default ``$LOSSWATCH_PROJECT``) is used when a call names
    none. ``transport`` replaces the HTTP connection (see :mod:`losswatch.client.transport`). One
    keep-alive connection; not for use from several threads at once (make one ``Api`` each).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        project: str | None = None,
        *,
        timeout: float = 60.0,
        transport: Transport | None = None,
    ) -> None:
        self.url, self.project = settings.url(url), settings.project(project, default=None)
        token = settings.token(token)
        self._transport = transport if transport is not None else HTTPTransport(self.url, token, timeout)
        self._loads = _json_loads()

    # ---- plumbing ------------------------------------------------------------------------------

    def get(self, path: str, params: Mapping[str, Any] | Sequence[tuple[str, Any]] = ()) -> Any:
        """``GET /api/v1{path}`` with ``params`` (a mapping or (name, value) pairs), parsed JSON."""
        query = urllib.parse.urlencode(list(params.items()) if isinstance(params, Mapping) else list(params))
        status, _, body = self._transport.request("GET", API + path + ("?" + query if query else ""))
        if status >= 400:
            raise _server_error(status, body)
        try:
            return self._loads(body)
        except ValueError as exc:
            raise TransportError(f"the server at {self.url} answered {path} with something that is not JSON") from exc

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _project(self, project: str | None) -> str:
        name = project or self.project
        if not name:
            raise ValueError("losswatch: name a project (Api(project=...), $LOSSWATCH_PROJECT or the argument)")
        return _quote(name)

    # ---- projects and runs ---------------------------------------------------------------------

    def projects(self) -> list[dict[str, Any]]:
        """The projects the token can see: ``[{"name", "created_at", "runs"}]``."""
        return list(self.get("/projects")["projects"])

    def runs(
        self,
        project: str | None = None,
        *,
        status: str | None = None,
        tags: Iterable[str] | str = (),
        name: str | None = None,
        group: str | None = None,
        config: Mapping[str, Any] | None = None,
        sort: str = "-created_at",
        limit: int | None = None,
    ) -> RunList:
        """Runs of ``project`` with the filters and sorts of the REST list (``docs/api.md``):
        ``tags`` all must match, ``name`` a substring, ``config={"optim.name": "adamw"}`` equality,
        ``sort`` such as ``"-max:val/mAP50-95"``, ``"config.lr"``, ``"-created_at"``. ``limit``
        (default: all) runs come back, fetched 10,000 a request."""
        if limit is not None and limit < 1:
            raise ValueError(f"losswatch: limit must be at least 1, got {limit}")
        params: list[tuple[str, Any]] = [("sort", sort)]
        if status is not None:
            params.append(("status", status))
        params += [("tag", t) for t in ([tags] if isinstance(tags, str) else tags)]
        if name is not None:
            params.append(("name", name))
        if group is not None:
            params.append(("group", group))
        for key, value in (config or {}).items():
            params.append((f"config.{key}", value if isinstance(value, str) else json.dumps(value)))
        path = f"/projects/{self._project(project)}/runs"
        found: list[ApiRun] = []
        total = 0
        while limit is None or len(found) < limit:
            size = RUN_PAGE if limit is None else min(RUN_PAGE, limit - len(found))
            page = self.get(path, [*params, ("limit", size), ("offset", len(found))])
            total = int(page["total"])
            found += [ApiRun(self, r) for r in page["runs"]]
            if not page["runs"] or len(found) >= total:
                break
        return RunList(found, total)

    def run(self, run_id: str) -> ApiRun:
        """One run (its config, tags, status and series summaries)."""
        return ApiRun(self, self.get(f"/runs/{_quote(run_id)}"))

    def alerts(
        self,
        project: str | None = None,
        *,
        status: str | None = None,
        run: str | None = None,
        rule: str | None = None,
        severity: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The project's alerts, newest first (``status`` ``firing`` or ``resolved``; ``run``,
        ``rule``, ``severity`` filter); every page is fetched unless ``limit`` says otherwise."""
        params = [(k, v) for k, v in (("status", status), ("run", run), ("rule", rule), ("severity", severity))
                  if v is not None]
        path = f"/projects/{self._project(project)}/alerts"
        found: list[dict[str, Any]] = []
        while limit is None or len(found) < limit:
            size = 1000 if limit is None else min(1000, limit - len(found))
            page = self.get(path, [*params, ("limit", size), ("offset", len(found))])
            found += page["alerts"]
            if not page["alerts"] or len(found) >= int(page["total"]):
                break
        return found

    # ---- points ----------------------------------------------------------------------------------

    def _raw(self, run_id: str, key: str, start: int, end: int) -> dict[str, Any]:
        steps: list[Any] = []
        values: list[Any] = []
        walls: list[Any] = []
        kind = None
        at: int | None = start
        while at is not None:
            page = self.get(f"/runs/{_quote(run_id)}/points",
                            {"key": key, "start": at, "end": end, "limit": POINT_PAGE})
            kind = page.get("kind")
            steps.append(_ints(page["steps"]))
            values.append(_floats(page["values"]))
            walls.append(_floats(page["wall_times"]))
            at = page["next_start"]
        return {"kind": kind, "step": _concat(steps), "value": _concat(values), "wall_time": _concat(walls)}

    def _buckets(self, run_id: str, keys: list[str], start: int, end: int, buckets: int) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(keys), QUERY_KEYS):
            params = [("run", run_id), *[("key", k) for k in keys[i : i + QUERY_KEYS]],
                      ("start", start), ("end", end), ("buckets", buckets)]
            for s in self.get("/query", params)["series"]:
                out[s["key"]] = {
                    "kind": s.get("kind"), "width": s.get("width"),
                    "step": _ints(s["step"]), "last_step": _ints(s["last_step"]),
                    "min": _floats(s["min"]), "max": _floats(s["max"]), "last": _floats(s["last"]),
                    "count": _ints(s["count"]), "nonfinite": _ints(s["nonfinite"]), "wall": _floats(s["wall"]),
                }  # fmt: skip
        return out


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _server_error(status: int, body: bytes) -> ServerError:
    try:
        err = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        err = {}
    if not isinstance(err, dict):
        err = {}
    return ServerError(status, str(err.get("code") or ""), str(err.get("message") or body[:200].decode(errors="replace")),
                       err.get("details"))


class ApiRun:
    """One run as the server returned it. ``data`` is the full JSON; the common fields are attributes."""

    def __init__(self, api: Api, data: dict[str, Any]) -> None:
        self._api = api
        self.data = data
        self.id: str = data["id"]
        self.project: str = data.get("project", "")
        self.name: str | None = data.get("name")
        self.group: str | None = data.get("group")
        self.status: str = data.get("status", "")
        self.tags: list[str] = list(data.get("tags") or [])
        self.config: dict[str, Any] = dict(data.get("config") or {})
        self.created_at: str | None = data.get("created_at")

    @property
    def summary(self) -> dict[str, dict[str, Any]]:
        """Per series: kind, count, nonfinite, first_step, last_step, last, min, max."""
        out = {}
        for key, s in (self.data.get("summary") or {}).items():
            s = dict(s)
            for field in ("last", "min", "max"):
                if isinstance(s.get(field), str):
                    s[field] = wire.decode_value(s[field])
            out[key] = s
        return out

    @property
    def keys(self) -> list[str]:
        return sorted(self.data.get("summary") or {})

    def history(
        self,
        keys: Iterable[str] | str | None = None,
        start: int = 0,
        end: int | None = None,
        *,
        buckets: int | None = None,
        pandas: bool = False,
    ) -> Any:
        """Points of ``keys`` (default: every series) between steps ``start`` and ``end``.

        Raw (default): every point, ``h[key]`` = ``{"step", "value", "wall_time"}`` arrays.
        ``buckets=N``: the server's downsampling, ``h[key]`` = ``{"step", "last_step", "min",
        "max", "last", "count", "nonfinite", "wall"}`` (a spike or a NaN is never hidden).
        Returns a :class:`History`, or its DataFrame with ``pandas=True``."""
        names = self.keys if keys is None else [keys] if isinstance(keys, str) else list(keys)
        hi = wire.MAX_STEP if end is None else end
        if buckets is None:
            series = {k: self._api._raw(self.id, k, start, hi) for k in names}
        else:
            series = self._api._buckets(self.id, names, start, hi, buckets) if names else {}
        history = History(self.id, series, raw=buckets is None)
        return history.to_pandas() if pandas else history

    def alerts(self, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else {}
        return list(self._api.get(f"/runs/{_quote(self.id)}/alerts", params)["alerts"])

    def row(self) -> dict[str, Any]:
        """The run as one table row: fields, ``config.*`` (flattened) and ``last:``/``min:``/``max:``
        of every series (the names of the list's sort)."""
        row: dict[str, Any] = {"id": self.id, "name": self.name, "group": self.group, "status": self.status,
                               "tags": self.tags, "created_at": self.created_at}
        row.update(_flat(self.config, "config"))
        for key, s in self.summary.items():
            for field in ("last", "min", "max"):
                v = s.get(field)
                row[f"{field}:{key}"] = float("nan") if v is None else v
        return row

    def __repr__(self) -> str:
        return f"<losswatch.ApiRun {self.id} project={self.project!r} name={self.name!r} status={self.status}>"


class RunList(list[ApiRun]):
    """The runs of a search (a list); ``total`` is how many matched, ``to_pandas()`` one row each."""

    def __init__(self, runs: Iterable[ApiRun], total: int) -> None:
        super().__init__(runs)
        self.total = total

    def to_pandas(self) -> Any:
        pd = _pandas()
        return pd.DataFrame([r.row() for r in self]).set_index("id") if self else pd.DataFrame()


class History(Mapping[str, dict[str, Any]]):
    """The series of one run, by key: each a dict of equal-length arrays (numpy when installed)."""

    def __init__(self, run_id: str, series: dict[str, dict[str, Any]], raw: bool) -> None:
        self.run_id = run_id
        self.raw = raw
        self._series = series

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self._series[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._series)

    def __len__(self) -> int:
        return len(self._series)

    def to_pandas(self) -> Any:
        """Raw: one row per step, one column per key (NaN where a key has no point at that step).
        Buckets: one row per (key, bucket) with the bucket's columns."""
        pd = _pandas()
        if self.raw:
            cols = [pd.Series(s["value"], index=pd.Index(s["step"], name="step"), name=k)
                    for k, s in self._series.items()]
            return pd.concat(cols, axis=1).sort_index() if cols else pd.DataFrame(index=pd.Index([], name="step"))
        frames = []
        for key, s in self._series.items():
            frame = pd.DataFrame({f: s[f] for f in ("step", "last_step", "min", "max", "last", "count", "nonfinite", "wall")})
            frame.insert(0, "key", key)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def __repr__(self) -> str:
        return f"<losswatch.History run={self.run_id} keys={list(self._series)} raw={self.raw}>"
