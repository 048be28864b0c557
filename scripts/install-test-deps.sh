#!/usr/bin/env bash
# Install the Debian packages the integration tests need (a real Slurm cluster and sshd, and
# chromium for the MLflow run-page test: Playwright drives it and never downloads a browser).
# Idempotent and quiet when everything is there; `make test` runs it as root, CI on a fresh
# Debian 12 machine too. Usage: scripts/install-test-deps.sh
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge openssh-server)
BARE_PACKAGES=(chromium)  # installed without their recommended packages

missing_packages() {
    local pkg
    for pkg in "${PACKAGES[@]}" "${BARE_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
            echo "$pkg"
        fi
    done
}

mapfile -t MISSING < <(missing_packages)
[ "${#MISSING[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing Debian packages: ${MISSING[*]}" >&2
    echo "install-test-deps: run as root:  apt-get install -y ${MISSING[*]}" >&2
    exit 1
fi

LOG="$(mktemp -t podrun-apt.XXXXXX.log)"
export DEBIAN_FRONTEND=noninteractive
# Wait for a concurrent apt/dpkg run instead of failing on its lock.
APT=(apt-get -o DPkg::Lock::Timeout=600 -y -q)
BARE=()
for pkg in "${MISSING[@]}"; do
    [[ " ${BARE_PACKAGES[*]} " == *" $pkg "* ]] && BARE+=("$pkg")
done
FULL=()
for pkg in "${MISSING[@]}"; do
    [[ " ${BARE[*]} " == *" $pkg "* ]] || FULL+=("$pkg")
done
if ! { "${APT[@]}" update \
        && { [ "${#FULL[@]}" -eq 0 ] || "${APT[@]}" install "${FULL[@]}"; } \
        && { [ "${#BARE[@]}" -eq 0 ] || "${APT[@]}" install --no-install-recommends "${BARE[@]}"; }; } >"$LOG" 2>&1; then
    echo "install-test-deps: 'apt-get install ${MISSING[*]}' failed; last lines of $LOG:" >&2
    tail -n 20 "$LOG" >&2
    exit 1
fi
rm -f "$LOG"
