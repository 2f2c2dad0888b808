#!/usr/bin/env bash
# Install the peers of bench/peers: RabbitMQ, Redis and NATS from Debian's packages, and
# their Python clients (pika, redis, nats-py) into the current Python environment.
#
# Usage (as root, or with sudo on PATH):
#     bash bench/peers/install.sh            # PYTHON=/path/to/python to choose the interpreter
#
# The packages' system services are NOT started: during the install a temporary
# /usr/sbin/policy-rc.d answers 101 ("action forbidden") to every invoke-rc.d call. A
# policy-rc.d that was there before is put back afterwards, byte for byte. If one of the
# servers is running after the install and was not before, the script says so and leaves
# it alone: it ends no process (the benchmark starts its own servers on free ports).
set -euo pipefail

PACKAGES=(rabbitmq-server redis-server nats-server)
CLIENTS=(pika redis nats-py)
SERVER_NAMES=(beam.smp redis-server nats-server epmd)
POLICY=/usr/sbin/policy-rc.d

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null; then
    SUDO=(sudo)
else
    echo "install.sh: apt-get needs root (or sudo)" >&2
    exit 1
fi

PY=${PYTHON:-$(command -v python || command -v python3)}

running() {  # pid and name of each server-like process running now, one a line
    local name
    for name in "${SERVER_NAMES[@]}"; do
        pgrep -x "$name" | sed "s/\$/ $name/" || true
    done | sort
}

before=$(running)

backup=""
restore_policy() {
    if [[ -n $backup ]]; then
        "${SUDO[@]}" mv -f "$backup" "$POLICY"
    else
        "${SUDO[@]}" rm -f "$POLICY"
    fi
}
if [[ -e $POLICY ]]; then
    backup=$(mktemp /usr/sbin/policy-rc.d.bench-peers.XXXXXX)
    "${SUDO[@]}" cp -p "$POLICY" "$backup"
fi
trap restore_policy EXIT
printf '#!/bin/sh\n# bench/peers/install.sh: start no service while it installs\nexit 101\n' \
    | "${SUDO[@]}" tee "$POLICY" >/dev/null
"${SUDO[@]}" chmod 755 "$POLICY"

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${PACKAGES[@]}"

restore_policy
trap - EXIT

after=$(running)
started=$(comm -13 <(echo "$before") <(echo "$after") | sed '/^$/d' || true)
if [[ -n $started ]]; then
    echo "install.sh: WARNING: these server processes started during the install and were" >&2
    echo "left running (this script stops nothing it did not start):" >&2
    echo "$started" | sed 's/^/    pid /' >&2
else
    echo "install.sh: no server process was started by the install"
fi

"$PY" -m pip install "${CLIENTS[@]}"

echo "install.sh: installed:"
dpkg-query -W -f '    ${Package} ${Version}\n' "${PACKAGES[@]}"
"$PY" - <<'PYEOF'
import importlib.metadata as md
for name in ("pika", "redis", "nats-py"):
    print(f"    {name} {md.version(name)} ({__import__('sys').executable})")
PYEOF
