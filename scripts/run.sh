#!/usr/bin/env bash
# One entry point for humans and CI: sets everything up on a fresh machine, then
#   scripts/run.sh app    -> starts the Streamlit dashboard on the built-in default model
#   scripts/run.sh test   -> runs the whole test suite
#   scripts/run.sh cli …  -> runs the `mixquant` command line
# The virtual environment lives outside the checkout (5.5 GB of CUDA torch) so that every clone,
# CI's included, reuses it; a stamp of requirements.txt + this checkout's path decides when to
# (re)install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${MIXQUANT_VENV:-$HOME/.cache/mixquant/venv}"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment in $venv" >&2
  mkdir -p "$(dirname "$venv")"
  "$py" -m venv "$venv"
fi
stamp="$venv/.mixquant-stamp"
want="$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16) $root"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements (first run on a machine takes several minutes)" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"

need_browser() {
  # The end-to-end test drives Debian's Chromium (a browser download cannot work here).
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "[setup] installing Debian chromium + chromium-driver for the browser test" >&2
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null;
    else sudo apt-get update -qq && sudo apt-get install -y -qq chromium chromium-driver >/dev/null; fi
  fi
}

cmd="${1:-app}"; shift || true
case "$cmd" in
  app)
    exec streamlit run app.py --server.headless true --browser.gatherUsageStats false "$@" ;;
  test)
    need_browser
    exec python -m pytest -q -p no:cacheprovider "$@" ;;
  cli)
    exec mixquant "$@" ;;
  *)
    echo "usage: scripts/run.sh app|test|cli [args]" >&2; exit 2 ;;
esac
