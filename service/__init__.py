"""aiagent-live: workflow executions in PostgreSQL, pushed live to WebSockets."""
