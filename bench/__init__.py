"""The benchmark harness: the service against the polling design and a broadcaster baseline."""
