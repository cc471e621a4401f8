"""Airflow itself, and everything that depends on its release: the line profiles, the install (its own
venv, constraints), the environment every Airflow process shares (config), its schema and admin user,
the Airflow CLI as the stack runs it, and the code that runs on Airflow's own Python (airflow_side/:
the launcher and the helper)."""
