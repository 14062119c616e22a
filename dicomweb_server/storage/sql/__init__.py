"""SQL index for SQLite and PostgreSQL."""
