"""The catalog is read-only: let through one SELECT-like statement, refuse everything else."""

from __future__ import annotations

import re

_EXPLAIN = re.compile(r"^\s*explain\s+(?:analyze\s+)?(.*)$", re.IGNORECASE | re.DOTALL)


def check_read_only(con, sql: str) -> str:
    """Return the single read-only statement in `sql`; raise ValueError for anything else.

    Allowed: SELECT (with WITH, DESCRIBE, SHOW, SUMMARIZE, FROM-first, VALUES) and EXPLAIN
    [ANALYZE] of a SELECT. Refused: several statements, and every statement that writes or
    changes state (INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, COPY, ATTACH, DETACH, SET,
    PRAGMA, INSTALL, LOAD, EXPORT, IMPORT, CALL, PIVOT statements, transactions, …).
    """
    import duckdb

    if not isinstance(sql, str) or not sql.strip():
        raise ValueError("empty SQL: give one SELECT statement")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise ValueError(f"SQL does not parse: {one_line(e)}") from e
    statements = [s for s in statements if s.query.strip().rstrip(";").strip()]
    if len(statements) != 1:
        raise ValueError(f"one statement at a time, got {len(statements)}: the catalog runs a "
                         "single read-only SELECT")
    statement = statements[0]
    kind = statement.type
    if kind == duckdb.StatementType.EXPLAIN:
        inner = _EXPLAIN.match(statement.query)
        inner_kinds = [s.type for s in con.extract_statements(inner.group(1))] if inner else []
        if inner_kinds != [duckdb.StatementType.SELECT]:
            raise ValueError("the catalog is read-only: EXPLAIN is allowed only for a SELECT")
    elif kind != duckdb.StatementType.SELECT:
        raise ValueError(f"the catalog is read-only: {_verb(statement.query, kind)} statements "
                         "are refused; run a SELECT (or WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)")
    return statement.query


def _verb(query: str, kind) -> str:
    words = re.findall(r"[A-Za-z_]+", query)
    return words[0].upper() if words else kind.name


def one_line(exc: BaseException) -> str:
    """A DuckDB error message on one line, without the `LINE 1: ... ^` pointer."""
    kept = []
    for line in str(exc).strip().splitlines():
        if line.startswith("LINE ") or not line.strip() or set(line.strip()) == {"^"}:
            break
        kept.append(line.strip())
    return " ".join(kept) or type(exc).__name__
