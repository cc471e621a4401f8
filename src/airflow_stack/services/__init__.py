"""The services the stack installs and runs for Airflow: the host's package and service manager
(host*.py: Homebrew, apt with systemd, apt with pg_ctlcluster), PostgreSQL (the server, the role and
database, who may connect), our Redis, memcached, the login limiter's storage, and TLS. Each gives
configuration, commands and checks; starting, waiting and stopping is the runtime's."""
