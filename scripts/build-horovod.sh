#!/usr/bin/env bash
# Build Horovod 0.28.1 for this venv's PyTorch (once), cache the wheel, and install it.
#
# Usage: scripts/build-horovod.sh [VENV_PYTHON]        (default: .venv/bin/python)
#
# Horovod 0.28.1 is an sdist on PyPI and does not build against PyTorch >= 2.1: PyTorch's
# headers need C++17 and Horovod's CMake pins C++14 (horovod#3996, #4014). We patch the two
# `set(CMAKE_CXX_STANDARD 14)` lines to 17 and build with Gloo (no MPI, no TensorFlow/MXNet).
# The build takes 3 to 7 minutes on 2 cores, so the wheel is cached in
#   ${PODRUN_WHEEL_CACHE:-$HOME/.cache/podrun/wheels}/horovod-0.28.1/<python>-torch-<version>[-nccl]/
# and a later run only installs it (seconds). The extension links against one exact torch build,
# hence one cache folder per torch version. Needs cmake, g++ and the Python headers.
set -euo pipefail

HOROVOD_VERSION=0.28.1
PYTHON="${1:-.venv/bin/python}"
CACHE_ROOT="${PODRUN_WHEEL_CACHE:-$HOME/.cache/podrun/wheels}"

say() { echo "build-horovod: $*"; }
die() { echo "build-horovod: error: $*" >&2; exit 1; }

[ -x "$PYTHON" ] || die "no Python interpreter at '$PYTHON' (usage: $0 [VENV_PYTHON])"
PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"  # absolute: we cd later
BIN_DIR="$(dirname "$PYTHON")"

horovod_torch_works() {
    "$PYTHON" -c "import horovod.torch" >/dev/null 2>&1
}

# One line: "<python tag> <torch version> <torch CUDA version or None>".
read -r PY_TAG TORCH_VERSION TORCH_CUDA < <("$PYTHON" - <<'EOF' || true
import sys
try:
    import torch
except ImportError:
    sys.exit(1)
print(f"cp{sys.version_info[0]}{sys.version_info[1]}", torch.__version__, torch.version.cuda)
EOF
) || true
[ -n "${TORCH_VERSION:-}" ] || die "torch is not importable with $PYTHON; install it first (CPU: pip install torch==2.13.0)"

if horovod_torch_works; then
    say "horovod.torch already imports in $PYTHON (torch $TORCH_VERSION); nothing to do"
    exit 0
fi

# NCCL only for a CUDA build of torch on a machine with nvcc: a CPU torch next to a CUDA
# toolkit (as on our CI machines) must build the CPU-only flavour.
GPU_OPS=""
if [ "$TORCH_CUDA" != "None" ] && command -v nvcc >/dev/null 2>&1; then
    GPU_OPS=NCCL
fi
KEY="${PY_TAG}-torch-${TORCH_VERSION}${GPU_OPS:+-nccl}"
KEY_DIR="$CACHE_ROOT/horovod-$HOROVOD_VERSION/$KEY"
mkdir -p "$KEY_DIR"

install_cached_wheel() {
    local wheel
    wheel="$(find "$KEY_DIR" -maxdepth 1 -name "horovod-$HOROVOD_VERSION-*.whl" | head -n 1)"
    [ -n "$wheel" ] || return 1
    say "installing cached wheel $wheel"
    # Replace a broken install (e.g. one built for another torch) but leave its dependencies alone;
    # the second call only adds the missing ones (cloudpickle, psutil, pyyaml, packaging, cffi).
    "$PYTHON" -m pip install --quiet --force-reinstall --no-deps "$wheel" \
        && "$PYTHON" -m pip install --quiet "$wheel" \
        || die "pip install $wheel failed"
}

verify() {
    say "verifying: import horovod.torch; hvd.init(); hvd.size()"
    "$PYTHON" -c "import horovod.torch as hvd; hvd.init(); print('horovod size:', hvd.size())" \
        || die "horovod.torch does not work after installing; rebuild with: rm -rf '$KEY_DIR' && $0 $PYTHON"
    say "horovodrun --check-build:"
    "$BIN_DIR/horovodrun" --check-build
}

check_prerequisites() {
    local missing=() include
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    command -v g++ >/dev/null 2>&1 || missing+=(g++)
    command -v make >/dev/null 2>&1 || missing+=(make)
    include="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    [ -f "$include/Python.h" ] || missing+=(python3-dev)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "build-horovod: missing build prerequisites: ${missing[*]}" >&2
        echo "build-horovod: install them with:  apt-get install -y ${missing[*]}" >&2
        [ -f "$include/Python.h" ] || echo "build-horovod: (Python.h must be in $include; for a" \
            "pyenv/uv Python reinstall that Python with its headers instead of python3-dev)" >&2
        exit 1
    fi
    # --no-build-isolation builds with the venv's own setuptools and wheel.
    "$PYTHON" -c "import setuptools, wheel" 2>/dev/null \
        || die "setuptools and wheel are missing in the venv: $PYTHON -m pip install setuptools wheel"
}

patch_cxx_standard() {  # $1: unpacked source folder
    local file
    for file in "$1/CMakeLists.txt" "$1/horovod/torch/CMakeLists.txt"; do
        [ -f "$file" ] || die "$file not found in the Horovod sdist"
        grep -q 'set(CMAKE_CXX_STANDARD 14)' "$file" \
            || die "'set(CMAKE_CXX_STANDARD 14)' not found in $file: the sdist changed, check the C++17 patch"
        sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$file"
        grep -q 'set(CMAKE_CXX_STANDARD 17)' "$file" || die "patching $file to C++17 failed"
    done
}

build_wheel() {
    local src log started
    WORK="$(mktemp -d -t podrun-horovod-build.XXXXXX)"
    trap 'rm -rf "$WORK"' EXIT
    log="$KEY_DIR/build.log"

    say "[1/4] downloading the horovod==$HOROVOD_VERSION sdist from PyPI"
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: -d "$WORK/sdist" "horovod==$HOROVOD_VERSION" \
        || die "pip download horovod==$HOROVOD_VERSION failed"
    tar -xzf "$WORK"/sdist/horovod-"$HOROVOD_VERSION".tar.gz -C "$WORK"
    src="$WORK/horovod-$HOROVOD_VERSION"

    say "[2/4] patching CMAKE_CXX_STANDARD 14 -> 17 (PyTorch >= 2.1 needs C++17)"
    patch_cxx_standard "$src"

    say "[3/4] compiling for torch $TORCH_VERSION (Gloo${GPU_OPS:+, NCCL}, no MPI); this takes 3 to 7 minutes on 2 cores"
    say "      full log: $log"
    started=$SECONDS
    if ! env HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
            HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 ${GPU_OPS:+HOROVOD_GPU_OPERATIONS=$GPU_OPS} \
            MAKEFLAGS="${MAKEFLAGS:--j2}" \
            "$PYTHON" -m pip wheel --verbose --no-build-isolation --no-deps --no-cache-dir \
            -w "$WORK/wheel" "$src" >"$log" 2>&1; then
        echo "build-horovod: the build failed after $((SECONDS - started)) s; last 40 lines of $log:" >&2
        tail -n 40 "$log" >&2
        echo "build-horovod: full log: $log" >&2
        exit 1
    fi
    say "      compiled in $((SECONDS - started)) s"

    say "[4/4] caching the wheel in $KEY_DIR"
    local wheel
    wheel="$(find "$WORK/wheel" -name "horovod-$HOROVOD_VERSION-*.whl" | head -n 1)"
    [ -n "$wheel" ] || die "pip wheel succeeded but left no horovod wheel; see $log"
    # Copy then rename, so a crash never leaves a half-written wheel that looks cached.
    cp "$wheel" "$KEY_DIR/.partial.whl"
    mv "$KEY_DIR/.partial.whl" "$KEY_DIR/$(basename "$wheel")"
    echo "python=$PY_TAG torch=$TORCH_VERSION torch_cuda=$TORCH_CUDA gpu_operations=${GPU_OPS:-none}" \
        >"$KEY_DIR/BUILD_INFO"
}

# Two concurrent runs (e.g. two CI jobs on one machine) must not both build: the second waits.
exec 9>"$KEY_DIR/.lock"
flock 9

if ! install_cached_wheel; then
    say "no cached wheel for $KEY in $KEY_DIR; building one"
    check_prerequisites
    build_wheel
    install_cached_wheel || die "the wheel just built is not in $KEY_DIR"
fi
verify
say "done; cached wheel: $KEY_DIR"
