"""The identity state store: the seam and its value types (`base`), SQLite and PostgreSQL backends, `opening`."""
