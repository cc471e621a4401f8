# Sourced by scripts/up, scripts/test and scripts/airflow: make sure .venv holds the tooling
# (invoke, nox, this package), exactly as uv.lock pins it (hashes checked; `uv lock` after a change to
# pyproject.toml). Uses uv when it is on PATH, else python3 -m venv + pip (to fetch uv once). Never prompts.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}
export UV_PYTHON_DOWNLOADS=never  # use this machine's Python; never download one

if ! command -v "$PY" >/dev/null 2>&1; then
  echo "airflow-stack: $PY not found; install Python >= 3.10 (apt-get install python3 python3-venv, or brew install python)" >&2
  exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "airflow-stack: $("$PY" --version 2>&1) is too old; Python >= 3.10 is needed (set PYTHON=/path/to/python3.x)" >&2
  exit 1
fi

want=$("$PY" -c 'import hashlib,sys; print(hashlib.sha256(b"".join(open(f,"rb").read() for f in sys.argv[1:])).hexdigest())' \
  "$ROOT/pyproject.toml" "$ROOT/uv.lock")
if [ ! -x "$VENV/bin/invoke" ] || [ "$(cat "$VENV/.bootstrap-stamp" 2>/dev/null)" != "$want" ]; then
  echo "airflow-stack: preparing the tooling venv in .venv" >&2
  if command -v uv >/dev/null 2>&1; then
    UV=uv
    [ -x "$VENV/bin/python" ] || uv venv -q --python "$(command -v "$PY")" "$VENV"
  else
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" || {
      echo "airflow-stack: python3 -m venv failed; on Debian/Ubuntu: apt-get install python3-venv" >&2; exit 1; }
    [ -x "$VENV/bin/uv" ] || "$VENV/bin/pip" install -q --disable-pip-version-check uv
    UV="$VENV/bin/uv"
  fi
  # exactly the lock (what it does not pin is removed), every file checked against its hash
  # compiled now: where PYTHONDONTWRITEBYTECODE is set, every invoke would compile its imports again (1.2 s)
  (cd "$ROOT" && UV_PROJECT_ENVIRONMENT="$VENV" "$UV" sync -q --locked --compile-bytecode --no-default-groups \
    --group dev --python "$VENV/bin/python")
  echo "$want" > "$VENV/.bootstrap-stamp"
fi
# this package's own modules too (uv compiles what it installs; ours is editable): only what changed
"$VENV/bin/python" -m compileall -q "$ROOT/src" >/dev/null 2>&1 || true
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
