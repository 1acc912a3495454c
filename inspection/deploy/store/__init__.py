"""The failure store: records and reviews in SQLite or PostgreSQL, the outbox, statistics and exports."""
