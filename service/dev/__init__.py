"""Development only: the embedded PostgreSQL and the demo worker."""
