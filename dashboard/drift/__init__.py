"""Schema drift: reference schemas by replay, comparison in Alembic's vocabulary, adoption."""
