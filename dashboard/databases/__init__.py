"""Everything that opens a connection to an environment's database."""
