#!/usr/bin/env bash
# Installs, idempotently, every outside program the test suite talks to:
# Debian's nginx, cgi-fcgi, dnsmasq, wrk and chromium, and the Python peers from PyPI (uWSGI,
# gunicorn, granian, flup, Django, Flask), plus cargo-fuzz for the fuzz smoke run.
# Safe to run again: each step is skipped when its program is already there.
set -euo pipefail

need_apt=()
command -v nginx    >/dev/null 2>&1 || need_apt+=(nginx-light)
command -v cgi-fcgi >/dev/null 2>&1 || need_apt+=(libfcgi-bin)
command -v wrk      >/dev/null 2>&1 || need_apt+=(wrk)
command -v curl     >/dev/null 2>&1 || need_apt+=(curl)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
command -v dnsmasq  >/dev/null 2>&1 || need_apt+=(dnsmasq-base)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The package starts a system nginx on port 80; the tests start their own.
  if command -v systemctl >/dev/null 2>&1; then systemctl stop nginx >/dev/null 2>&1 || true; fi
  pkill -x nginx >/dev/null 2>&1 || true
fi

PY=${PYTHON:-python3}
pip_want=(uwsgi gunicorn granian flup Django Flask)
missing=()
for pkg in "${pip_want[@]}"; do
  "$PY" -m pip show -q "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: pip install ${missing[*]}"
  "$PY" -m pip install -q --disable-pip-version-check "${missing[@]}"
fi

if [ "${INSTALL_FUZZ:-1}" = 1 ] && ! cargo fuzz --version >/dev/null 2>&1; then
  echo "install-deps: cargo install cargo-fuzz"
  cargo install -q --locked cargo-fuzz
fi
echo "install-deps: done"
