"""Run one catalog statement on its own cursor, within a time limit and a row limit.

Each query gets a fresh DuckDB cursor (an independent connection to the catalog's database),
so queries from different threads or app sessions run side by side instead of queueing
behind one lock. A `threading.Timer` calls DuckDB's own `interrupt()` on that cursor when the
time limit passes; rows are streamed (Arrow record batches) and reading stops one row past
the row limit, so a cross join is neither computed nor held in memory in full.

Defaults come from the environment, so the app and the command line share them:
FORENSICS_SQL_TIMEOUT (seconds, default 10; 0 = no limit) and FORENSICS_SQL_MAX_ROWS
(default 10000; 0 = no limit).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_ROWS = 10_000
TIMEOUT_ENV = "FORENSICS_SQL_TIMEOUT"
MAX_ROWS_ENV = "FORENSICS_SQL_MAX_ROWS"
_BATCH_ROWS = 2048


class QueryTimeoutError(ValueError):
    """The statement ran past its time limit and DuckDB interrupted it (nothing was returned)."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        super().__init__(f"query exceeded the time limit ({timeout_s:g} s) and was stopped; "
                         f"narrow it (WHERE run_id = …, LIMIT) or raise the limit "
                         f"(--timeout or --sql-timeout, ${TIMEOUT_ENV})")


@dataclass
class QueryResult:
    """A query's rows (`table`, a pyarrow Table) and whether the row limit cut them
    (`truncated`: the statement had more than `max_rows` rows; the first `max_rows` are kept)."""

    table: object
    truncated: bool = False
    max_rows: int | None = None


def timeout_from_env(default: float | None = DEFAULT_TIMEOUT_S) -> float | None:
    """Seconds from $FORENSICS_SQL_TIMEOUT (0 = no limit), else `default`; ValueError naming
    the variable when it is not a number ≥ 0."""
    return check_timeout(_env(TIMEOUT_ENV, float), TIMEOUT_ENV, default)


def max_rows_from_env(default: int | None = DEFAULT_MAX_ROWS) -> int | None:
    """Rows from $FORENSICS_SQL_MAX_ROWS (0 = no limit), else `default`; ValueError naming the
    variable when it is not an integer ≥ 0."""
    return check_max_rows(_env(MAX_ROWS_ENV, int), MAX_ROWS_ENV, default)


def check_timeout(value, what: str = "timeout", default: float | None = None) -> float | None:
    """A time limit in seconds (None or 0 means none); ValueError for a negative or non-finite one."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
            or value == float("inf"):
        raise ValueError(f"{what} must be a number of seconds ≥ 0 (0 = no limit), got {value!r}")
    return float(value) or None


def check_max_rows(value, what: str = "max_rows", default: int | None = None) -> int | None:
    """A row limit (None or 0 means none); ValueError for a negative or non-integer one."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a whole number of rows ≥ 0 (0 = no limit), got {value!r}")
    return value or None


def resolve(timeout_s=None, max_rows=None) -> tuple[float | None, int | None]:
    """(time limit, row limit) from the given values (as `--timeout`, `--max-rows`), else the
    environment, else the defaults; None means no limit. ValueError naming a bad value."""
    return (timeout_from_env() if timeout_s is None else check_timeout(timeout_s, "--timeout"),
            max_rows_from_env() if max_rows is None else check_max_rows(max_rows, "--max-rows"))


def as_environment(timeout_s=None, max_rows=None) -> dict[str, str]:
    """The environment variables that hand the given limits (`--sql-timeout`, `--sql-max-rows`)
    to another process (the app); only those given. ValueError naming a bad value."""
    out = {}
    for name, flag, value, check in ((TIMEOUT_ENV, "--sql-timeout", timeout_s, check_timeout),
                                     (MAX_ROWS_ENV, "--sql-max-rows", max_rows, check_max_rows)):
        if value is not None:
            check(value, flag)
            out[name] = str(value)
    return out


def _env(name: str, kind):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"${name} must be a number ≥ 0 (0 = no limit), got {raw!r}") from None


def run_statement(cur, statement: str, params=None, *, timeout_s: float | None = None,
                  max_rows: int | None = None) -> QueryResult:
    """Run the checked `statement` on cursor `cur` (nobody else's), interrupting it after
    `timeout_s` seconds (QueryTimeoutError) and keeping at most `max_rows` rows. Other DuckDB
    errors propagate as `duckdb.Error`."""
    import duckdb

    fired = threading.Event()
    timer = None
    if timeout_s:
        def stop():
            fired.set()
            cur.interrupt()

        timer = threading.Timer(timeout_s, stop)
        timer.daemon = True
        timer.start()
    try:
        rel = cur.sql(statement, params=params) if params is not None else cur.sql(statement)
        if rel is None:  # a statement without a result
            import pyarrow as pa
            return QueryResult(pa.table({}), False, max_rows)
        return _fetch(rel, max_rows)
    except duckdb.Error:
        if fired.is_set():
            raise QueryTimeoutError(timeout_s) from None
        raise
    finally:
        if timer is not None:
            timer.cancel()


def _fetch(rel, max_rows: int | None) -> QueryResult:
    import pyarrow as pa

    if max_rows is None:
        return QueryResult(_call(rel, "to_arrow_table", "fetch_arrow_table", "arrow"), False, None)
    reader = _call(rel, "to_arrow_reader", "fetch_arrow_reader", "fetch_record_batch",
                   args=(min(_BATCH_ROWS, max_rows + 1),))
    batches, rows = [], 0
    for batch in reader:
        batches.append(batch)
        rows += batch.num_rows
        if rows > max_rows:
            break
    table = pa.Table.from_batches(batches, schema=reader.schema)
    return QueryResult(table.slice(0, max_rows), rows > max_rows, max_rows)


def _call(rel, *names, args=()):
    for name in names:
        if hasattr(rel, name):
            return getattr(rel, name)(*args)
    raise AssertionError(f"this duckdb has none of {names}")
