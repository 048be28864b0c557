#!/usr/bin/env bash
# Install the Debian packages the integration tests need (a real Slurm cluster and sshd).
# Idempotent and quiet when everything is there; `make test` runs it as root, CI on a fresh
# Debian 12 machine too. Usage: scripts/install-test-deps.sh
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge openssh-server iproute2 util-linux)  # ip, tc, nsenter, unshare: the test hosts
# Headless Chromium for the HTML report test (Playwright drives it; it never downloads a browser).
LEAN_PACKAGES=(chromium)

missing_packages() {
    local pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
            echo "$pkg"
        fi
    done
}

mapfile -t MISSING < <(missing_packages "${PACKAGES[@]}")
mapfile -t MISSING_LEAN < <(missing_packages "${LEAN_PACKAGES[@]}")
[ "${#MISSING[@]}" -eq 0 ] && [ "${#MISSING_LEAN[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing Debian packages: ${MISSING[*]} ${MISSING_LEAN[*]}" >&2
    echo "install-test-deps: run as root:  apt-get install -y ${MISSING[*]}; apt-get install -y --no-install-recommends ${MISSING_LEAN[*]}" >&2
    exit 1
fi

LOG="$(mktemp -t podrun-apt.XXXXXX.log)"
export DEBIAN_FRONTEND=noninteractive
# Wait for a concurrent apt/dpkg run instead of failing on its lock.
APT=(apt-get -o DPkg::Lock::Timeout=600 -y -q)
apt_install() {
    "${APT[@]}" update
    [ "${#MISSING[@]}" -eq 0 ] || "${APT[@]}" install "${MISSING[@]}"
    [ "${#MISSING_LEAN[@]}" -eq 0 ] || "${APT[@]}" install --no-install-recommends "${MISSING_LEAN[@]}"
}
if ! apt_install >"$LOG" 2>&1; then
    echo "install-test-deps: 'apt-get install ${MISSING[*]} ${MISSING_LEAN[*]}' failed; last lines of $LOG:" >&2
    tail -n 20 "$LOG" >&2
    exit 1
fi
rm -f "$LOG"
