"""MLflow's search syntax: filter strings and ``order_by`` clauses, parsed into the plain values of
``losswatch.server.services.mlflow_search`` (which knows nothing of this syntax). The rest of the
protocol (errors, request fields, page tokens) is in ``mlflow_protocol``.

Grammar (MLflow's ``SearchUtils``): comparisons joined by ``AND`` (MLflow has no ``OR``)::

    metrics.`val/mAP50-95` > 0.3 AND params.optim = 'adamw' AND tags.team LIKE 'vis%'
    attributes.status = 'FINISHED' AND attributes.run_id IN ('a1', 'b2') AND run_name ILIKE '%lr%'

- an identifier is ``metric(s).KEY``, ``param(s)./parameter(s).KEY``, ``tag(s).KEY`` or
  ``attribute(s)./attr./run.KEY`` (a bare ``run_name``, ``status``... is an attribute); a KEY holding
  anything but letters, digits, ``_`` and ``.`` is quoted with backticks or double quotes;
- metrics compare with numbers (``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=``); params, tags and string
  attributes with quoted strings (``=``, ``!=``, ``LIKE``, ``ILIKE``, ``IN (...)``, ``NOT IN (...)``,
  ``IS NULL``, ``IS NOT NULL``); ``start_time``/``end_time`` with numbers (milliseconds).

``order_by``: ``["metrics.`val/mAP50-95` DESC", "params.lr", "attributes.start_time ASC"]``.
"""

from __future__ import annotations

import re
from typing import Any

from losswatch.server.api.mlflow_protocol import invalid
from losswatch.server.services.mlflow_search import ATTRIBUTES, NUMERIC_ATTRIBUTES, Condition, Order

_ENTITIES = {"metric": "metric", "metrics": "metric", "param": "param", "params": "param",
             "parameter": "param", "parameters": "param", "tag": "tag", "tags": "tag",
             "attribute": "attribute", "attributes": "attribute", "attr": "attribute", "run": "attribute"}
_ATTRIBUTE_ALIASES = {"created": "start_time", "Created": "start_time", "run_uuid": "run_id"}
_TOKEN = re.compile(r"""
    \s*(?:
      (?P<string>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.)*")
    | (?P<backtick>`[^`]*`)
    | (?P<number>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf(?:inity)?|nan))(?![\w.])
    | (?P<op>!=|<>|>=|<=|=|<|>)
    | (?P<punct>[(),.])
    | (?P<word>[A-Za-z_][\w\-/:]*)
    )""", re.VERBOSE | re.IGNORECASE)
_STRING_OPS = ("=", "!=", "LIKE", "ILIKE", "IN", "NOT IN", "IS NULL", "IS NOT NULL")
_NUMERIC_OPS = ("=", "!=", "<", "<=", ">", ">=")
MAX_FILTER = 10_000


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise invalid(f"Invalid filter '{text[:200]}': could not parse it at position {pos} ('{text[pos:pos + 20]}')")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _unquote(token: str) -> str:
    body = token[1:-1]
    if token[0] == "'":
        body = body.replace("''", "'")
    return re.sub(r"\\(.)", r"\1", body) if token[0] != "`" else body


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise invalid(f"Invalid filter '{self.text[:200]}': it ends too early")
        self.i += 1
        return tok

    def word(self, *words: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == "word" and tok[1].upper() in words:
            self.i += 1
            return True
        return False

    def identifier(self) -> tuple[str, str]:
        kind, text = self.take()
        if kind == "backtick" or kind == "string":
            raise invalid(f"Invalid identifier {text!r} in '{self.text[:200]}': expected metrics., params., tags. or attributes.")
        if kind != "word":
            raise invalid(f"Invalid filter '{self.text[:200]}': expected an identifier, got '{text}'")
        head, _, rest = text.partition(".")
        entity = _ENTITIES.get(head.lower()) if not rest else _ENTITIES.get(head.lower())
        if "." not in text and (self.peek() or ("", ""))[1] == ".":
            self.take()
            entity = _ENTITIES.get(text.lower())
            kind, key = self.take()
            if kind in ("backtick", "string"):
                key = _unquote(key)
            elif kind == "word":
                while (nxt := self.peek()) is not None and nxt[1] == "." and self.i + 1 < len(self.toks) \
                        and self.toks[self.i + 1][0] == "word":
                    self.take()
                    key += "." + self.take()[1]
            else:
                raise invalid(f"Invalid identifier in '{self.text[:200]}': '{key}'")
        elif "." not in text:
            entity, key = "attribute", text  # a bare attribute name (run_name, status, start_time ...)
        else:
            key = rest
        if entity is None:
            raise invalid(f"Invalid entity type '{head}'. Valid values are {sorted(set(_ENTITIES))}")
        if entity == "attribute":
            key = _ATTRIBUTE_ALIASES.get(key, key)
            if key not in ATTRIBUTES:
                raise invalid(f"Invalid attribute key '{key}' specified. Valid keys are '{set(ATTRIBUTES)}'")
        return entity, key

    def value(self, entity: str, key: str, op: str) -> Any:
        if op in ("IN", "NOT IN"):
            if self.take()[1] != "(":
                raise invalid(f"Invalid filter '{self.text[:200]}': {op} takes a list in parentheses")
            items = []
            while True:
                kind, text = self.take()
                if kind != "string":
                    raise invalid(f"Invalid filter '{self.text[:200]}': {op} takes quoted strings")
                items.append(_unquote(text))
                sep = self.take()[1]
                if sep == ")":
                    return tuple(items)
                if sep != ",":
                    raise invalid(f"Invalid filter '{self.text[:200]}': expected ',' or ')' in the {op} list")
        kind, text = self.take()
        numeric = entity == "metric" or (entity == "attribute" and key in NUMERIC_ATTRIBUTES)
        if numeric:
            if kind != "number":
                raise invalid(f"Expected numeric value type for metric or numeric attribute '{key}'. Found {text}")
            return float(text)
        if kind != "string":
            raise invalid(f"Value is either not quoted or unidentified quote types used for string value {text}. "
                          "Use either single or double quotes.")
        return _unquote(text)

    def comparison(self) -> Condition:
        entity, key = self.identifier()
        if self.word("IS"):
            neg = self.word("NOT")
            if not self.word("NULL"):
                raise invalid(f"Invalid filter '{self.text[:200]}': expected NULL after IS")
            op = "IS NOT NULL" if neg else "IS NULL"
            return Condition(entity, key, op, None)
        if self.word("NOT"):
            if not self.word("IN"):
                raise invalid(f"Invalid filter '{self.text[:200]}': expected IN after NOT")
            op = "NOT IN"
        elif self.word("IN"):
            op = "IN"
        elif self.word("LIKE"):
            op = "LIKE"
        elif self.word("ILIKE"):
            op = "ILIKE"
        else:
            kind, op = self.take()
            if kind != "op":
                raise invalid(f"Invalid comparator '{op}' in '{self.text[:200]}'")
            op = "!=" if op == "<>" else op
        numeric = entity == "metric" or (entity == "attribute" and key in NUMERIC_ATTRIBUTES)
        allowed = _NUMERIC_OPS if numeric else _STRING_OPS
        if op not in allowed:
            raise invalid(f"Invalid comparator '{op}' not one of '{allowed}' for {entity} '{key}'")
        return Condition(entity, key, op, self.value(entity, key, op))


def parse_filter(text: str | None) -> list[Condition]:
    if not text or not text.strip():
        return []
    if len(text) > MAX_FILTER:
        raise invalid(f"The filter string is longer than {MAX_FILTER} characters")
    parser = _Parser(text)
    out = [parser.comparison()]
    while parser.peek() is not None:
        if not parser.word("AND"):
            tok = parser.peek()
            raise invalid(f"Invalid filter '{text[:200]}': expected AND, got '{tok[1] if tok else ''}' "
                          "(MLflow's search has no OR)")
        out.append(parser.comparison())
    return out


def experiment_name_filter(text: str | None) -> tuple[str, str] | None:
    """search_experiments' filter: only ``name = '...'``, ``name != '...'``, ``name LIKE '...'`` or
    ``name ILIKE '...'`` (projects have no tags): (operator, value) or None."""
    if not text or not text.strip():
        return None
    toks = _tokens(text)
    if len(toks) == 3 and toks[0] == ("word", toks[0][1]) and toks[0][1].lower() == "name" and toks[2][0] == "string":
        op = toks[1][1].upper()
        if op in ("=", "!=", "LIKE", "ILIKE"):
            return op, _unquote(toks[2][1])
    raise invalid(f"Invalid experiment filter '{text[:200]}': losswatch supports name = '...', name != '...', "
                  "name LIKE '...' and name ILIKE '...'")


def parse_order_by(clauses: Any) -> list[Order]:
    if clauses is None:
        return []
    if not isinstance(clauses, list) or not all(isinstance(c, str) for c in clauses):
        raise invalid("Invalid value for parameter 'order_by': expected a list of strings")
    out = []
    for clause in clauses:
        parser = _Parser(clause)
        entity, key = parser.identifier()
        ascending = True
        if parser.word("DESC"):
            ascending = False
        else:
            parser.word("ASC")
        if parser.peek() is not None:
            raise invalid(f"Invalid order_by clause '{clause[:200]}': expected 'KEY [ASC|DESC]'")
        out.append(Order(entity, key, ascending))
    return out


__all__ = ["ATTRIBUTES", "experiment_name_filter", "parse_filter", "parse_order_by"]
