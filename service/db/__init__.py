"""The database: every SQL statement (repository), the migrations runner, psycopg2 glue."""
