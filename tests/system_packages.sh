#!/bin/sh
# What the tests drive that pip cannot install: Debian's chromium (tests/test_browser.py, through
# Playwright, which cannot download its own browser here) and nginx (tests/test_behind_nginx.py).
# `make test` runs this first, so the README's two commands are the whole set-up: silent when
# both are there; installed with apt-get when missing and this user may (root, or sudo without a
# password); otherwise one line says what to install.
set -eu

# The tests find them the same way: CHROMIUM and NGINX name other binaries; nginx lives in
# /usr/sbin, which is not on an ordinary user's PATH.
missing=""
[ -n "${CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
    || missing="$missing chromium"
[ -n "${NGINX:-}" ] || command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx"
[ -z "$missing" ] && exit 0
missing="${missing# }"

if ! command -v apt-get >/dev/null 2>&1; then
    echo "make test needs $missing (Debian: apt-get install $missing; or CHROMIUM / NGINX naming them)" >&2
    exit 1
fi
if [ "$(id -u)" = 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root="sudo"
else
    echo "make test needs Debian's $missing: sudo apt-get install -y $missing (then make test again)" >&2
    exit 1
fi

echo "installing Debian's $missing for the tests (apt-get install $missing)"
# Debian's nginx package starts its own service on port 80 where systemd runs: the tests do not
# use it (they start nginx on a free port); `systemctl disable --now nginx` if it is unwanted.
if ! { $as_root apt-get update -qq >/dev/null \
       && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null; }; then
    echo "make test needs Debian's $missing, and apt-get could not install it (above)" >&2
    exit 1
fi
