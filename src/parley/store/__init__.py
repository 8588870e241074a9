"""Storage: the terminal's database (SQLite by default, PostgreSQL on request)."""
