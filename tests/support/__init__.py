"""Development tooling beside the tests: the sandbox a whole stack runs in (integration tests,
benchmark), a REST client for both Airflow lines, and the benchmark with its report. None of it
ships in the runtime package."""
