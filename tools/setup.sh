#!/bin/sh
# Set up gffs on a fresh Debian machine and mount the default store.
#
#   tools/setup.sh [MOUNTPOINT]      install everything, then mount (default ~/gloflow)
#   tools/setup.sh --no-mount        install only (CI)
#
# Installs the Debian packages pyfuse3 needs to build (fuse3, libfuse3-dev,
# pkg-config, a compiler and Python headers), creates .venv in the repository,
# installs gffs into it with its test dependencies, and links the commands
# gffs, gffs-admin and mount.gffs onto the PATH. Also installs getfattr/setfattr
# (attr) for reading image facts, strace and exiftool, which tests use as
# independent witnesses, solcjs (npm) for the test NFT contracts, and Xvfb with
# Nautilus, PCManFM and Thunar for the file-manager tests.
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
MOUNT=yes
MOUNTPOINT="$HOME/gloflow"
for arg in "$@"; do
    case "$arg" in
        --no-mount) MOUNT=no ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) MOUNTPOINT="$arg" ;;
    esac
done

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
PYTHON=${PYTHON:-python3}

echo "gffs setup: Debian packages"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    fuse3 libfuse3-dev pkg-config gcc python3 python3-dev python3-venv attr strace libimage-exiftool-perl >/dev/null
# the file managers tests/test_desktop_*.py browse flows with, under Xvfb (docs/IMAGES.md)
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    xvfb xauth xdotool imagemagick dbus-daemon nautilus pcmanfm thunar tumbler \
    dolphin kio-extras >/dev/null

# solcjs (npm package solc) compiles the test NFT contracts offline (tests/fixtures_evm.py)
if ! command -v npm >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
echo "gffs setup: solcjs in $REPO/.cache/solc"
npm install --silent --no-audit --no-fund --prefix "$REPO/.cache/solc" solc@0.8 >/dev/null

echo "gffs setup: Python environment in $REPO/.venv"
"$PYTHON" -m venv "$REPO/.venv"
"$REPO/.venv/bin/python" -m pip install -q --upgrade pip
"$REPO/.venv/bin/python" -m pip install -q -e "$REPO[test]"

if [ "$(id -u)" = 0 ]; then BIN=/usr/local/bin; SBIN=/usr/local/sbin; else BIN="$HOME/.local/bin"; SBIN="$BIN"; fi
mkdir -p "$BIN" "$SBIN"
for cmd in gffs gffs-admin; do ln -sf "$REPO/.venv/bin/$cmd" "$BIN/$cmd"; done
ln -sf "$REPO/.venv/bin/mount.gffs" "$SBIN/mount.gffs"
# mount(8) looks for helpers in /sbin: make fstab lines of type gffs work
if [ "$(id -u)" = 0 ] && [ -d /sbin ] && [ ! -e /sbin/mount.gffs ]; then
    ln -sf "$REPO/.venv/bin/mount.gffs" /sbin/mount.gffs
fi
echo "gffs setup: commands linked into $BIN"

if [ "$MOUNT" = yes ]; then
    "$REPO/.venv/bin/gffs" mount "$MOUNTPOINT"
    echo "gffs: mounted at $MOUNTPOINT (unmount with: gffs umount $MOUNTPOINT)"
fi
