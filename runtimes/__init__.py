"""Which runtimes exist and how to talk to them: registry, handles, the one HTTP client, typed errors."""
