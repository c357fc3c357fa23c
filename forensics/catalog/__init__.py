"""The catalog: DuckDB views over the Parquet and JSON files of one or many runs."""
