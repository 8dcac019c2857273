"""Storage: the SQLite database (`sqlite`: connections, the writer and reader threads,
transactions), its schema and migrations (`schema`), and the mapping between rows and
models with the queries the rest of the package shares (`rows`)."""
