"""The catalog is read-only and reads only its views: let through one SELECT-like statement over
the views, refuse everything else.

Two layers. This module checks the statement with DuckDB's own parser (`extract_statements`
for its kind, `json_serialize_sql` for its parse tree): one SELECT-like statement, whose table
functions are on a short allow-list and whose table names are names, not file paths. Under
it, the connection itself is sandboxed by DuckDB's settings (forensics.catalog.views: external
access off, reads confined to the runs' folders, configuration locked), so SQL this check
misses still cannot read or write elsewhere.
"""

from __future__ import annotations

import json
import re

_EXPLAIN = re.compile(r"^\s*explain\s+(?:analyze\s+)?(.*)$", re.IGNORECASE | re.DOTALL)

# Table functions a query may call: they read no file and change nothing. Everything else
# (read_csv, read_text, read_blob, read_json*, read_parquet, parquet_*, glob, sniff_csv,
# query, query_table, checkpoint, enable_logging, json_execute_serialized_sql, functions of
# extensions, ...) is refused: the views are the way to the runs' files.
ALLOWED_TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "repeat", "json_each", "json_tree",
    "duckdb_columns", "duckdb_constraints", "duckdb_functions", "duckdb_keywords",
    "duckdb_schemas", "duckdb_tables", "duckdb_types", "duckdb_views",
    "pragma_table_info", "pragma_show", "pragma_version",
})
_NAME = re.compile(r'^"?[^"/\\.:*?~]+"?$')  # a table name, not a path ('x.csv', '/etc/passwd')


def check_read_only(con, sql: str) -> str:
    """Return the single read-only statement in `sql`; raise ValueError for anything else.

    Allowed: SELECT (with WITH, DESCRIBE, SHOW, SUMMARIZE, FROM-first, VALUES) and EXPLAIN
    [ANALYZE] of a SELECT, over the catalog's views and the table functions of
    `ALLOWED_TABLE_FUNCTIONS`. Refused: several statements; every statement that writes or
    changes state (INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, COPY, ATTACH, DETACH, SET,
    PRAGMA, INSTALL, LOAD, EXPORT, IMPORT, CALL, PIVOT statements, transactions, …); and a
    SELECT that reads files itself (read_csv, read_text, read_blob, glob, read_parquet, …,
    or a file path as a table name, `FROM '/etc/passwd'`).
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
    select = statement.query
    if kind == duckdb.StatementType.EXPLAIN:
        inner = _EXPLAIN.match(statement.query)
        inner_kinds = [s.type for s in con.extract_statements(inner.group(1))] if inner else []
        if inner_kinds != [duckdb.StatementType.SELECT]:
            raise ValueError("the catalog is read-only: EXPLAIN is allowed only for a SELECT")
        select = inner.group(1)
    elif kind != duckdb.StatementType.SELECT:
        raise ValueError(f"the catalog is read-only: {_verb(statement.query, kind)} statements "
                         "are refused; run a SELECT (or WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)")
    check_reads_only_views(con, select)
    return statement.query


def check_reads_only_views(con, select: str) -> None:
    """Raise ValueError when the SELECT `select` calls a table function that is not on
    `ALLOWED_TABLE_FUNCTIONS` or names a file as a table; DuckDB's parse tree is walked, so
    subqueries, CTEs, LATERAL joins and SUMMARIZE/DESCRIBE targets are all seen."""
    raw = con.execute("SELECT json_serialize_sql(?)", [select]).fetchall()[0][0]
    tree = json.loads(raw)
    if tree.get("error"):
        raise ValueError("the catalog is read-only and could not check this statement "
                         f"({tree.get('error_message', 'unknown')}); run a plain SELECT")
    for kind, name in _sources(tree):
        if kind == "function" and name.lower() not in ALLOWED_TABLE_FUNCTIONS:
            raise ValueError(f"the catalog reads only its views: table function {name}() is "
                             "refused (query runs, steps, spikes, measurements, findings, "
                             "snapshots, events)")
        if kind == "table" and not _NAME.match(name):
            raise ValueError(f"the catalog reads only its views: {name!r} looks like a file "
                             "path, and reading files directly is refused")


def _sources(node):
    """(kind, name) of every table function call and table name in a parse tree."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            kind = item.get("type")
            if kind == "TABLE_FUNCTION":
                yield "function", str((item.get("function") or {}).get("function_name", ""))
            elif kind == "BASE_TABLE":
                yield "table", str(item.get("table_name", ""))
            elif kind == "SHOW_REF" and item.get("table_name"):
                yield "table", str(item["table_name"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


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
