"""The user's project in the astro CLI's layout: its folder (folder.py), its connections, variables and
pools (objects.py), its DAGs checked, run and tested (dags.py)."""
