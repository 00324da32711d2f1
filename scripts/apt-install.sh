#!/usr/bin/env bash
# Install Debian packages the Makefile lists (as root, with apt), or say what cannot run.
#
#   scripts/apt-install.sh PACKAGE[=WHAT_SKIPS_WITHOUT_IT] ...
#
# Only missing packages are installed (apt-get update first, once, when something is missing),
# quietly, non-interactively, without recommends, and without starting any service a package's
# postinst would start (policy-rc.d says no while we install). Concurrent sessions wait for the
# dpkg lock instead of failing. Not root: nothing is installed; each missing package is named with
# what will be skipped without it, and the script exits 0 (the tests skip with a one-line reason).
set -uo pipefail

missing=() why=()
for arg in "$@"; do
    pkg=${arg%%=*}
    what=${arg#*=}
    [[ $what == "$arg" ]] && what=""
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
        why+=("$pkg: ${what:-needed}")
    fi
done
((${#missing[@]} == 0)) && exit 0

if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "apt-install: not root (or no apt-get): not installing ${missing[*]}; these will be skipped:" >&2
    printf '  %s\n' "${why[@]}" >&2
    exit 0
fi

# No service may start while we install (a container has no init to own it; tests start their own).
policy=/usr/sbin/policy-rc.d
created_policy=""
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created_policy=1
fi
cleanup() { [[ -n $created_policy ]] && rm -f "$policy"; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-qq -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
log=$(mktemp)
trap 'cleanup; rm -f "$log"' EXIT
echo "apt-install: installing ${missing[*]}" >&2
for attempt in 1 2 3; do  # apt-get update may meet another session's lock on the lists
    apt-get "${apt_opts[@]}" update >>"$log" 2>&1 && break
    sleep $((attempt * 10))
done
# Quiet: postinst chatter goes to the log, shown only when the install fails.
if ! apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "apt-install: apt-get install ${missing[*]} failed" >&2
    exit 1
fi
