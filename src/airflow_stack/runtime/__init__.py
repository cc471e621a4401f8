"""The running stack: what runs now (registry), how processes are started, supervised and stopped
(supervisor, with the launcher), whether they are healthy (health), what a start needs (preflight),
start, wait and stop (lifecycle), what status shows, and what processes cost (measure)."""
