#!/bin/sh
# System packages the test suite uses beyond Python: headless Chromium (dashboard test) and
# docker-compose (validates docker-compose.yml without an engine). Installed when missing and
# when we can (root with apt); otherwise those tests say what is missing.
need=""
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v docker-compose >/dev/null 2>&1 || need="$need docker-compose"
[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages for the test suite:$need"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need) >/tmp/segmenter-apt.log 2>&1 \
    || echo "warning: could not install$need (see /tmp/segmenter-apt.log)"
else
  echo "note: missing$need; run as root with apt-get, or install them, for the browser/compose tests"
fi
exit 0
