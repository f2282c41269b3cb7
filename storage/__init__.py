"""Storage: the work-folder layout, table schemas, Parquet tables, the DuckDB catalog.

Imports nothing of ours, so every other package can depend on it."""
