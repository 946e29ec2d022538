#!/usr/bin/env bash
# Build the Linux one-folder bundle and its tarball:
#   $DIST/tokentrace/                              the bundle (run $DIST/tokentrace/tokentrace)
#   $DIST/tokentrace-VERSION-linux-ARCH.tar.gz     what a clinician downloads
# Usage: installers/linux/build.sh [PYTHON]   (the build venv's python, default .venv/bin/python)
# DIST (default dist) and WORK (default build/pyinstaller) set where the results and
# PyInstaller's intermediate files go.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${1:-.venv/bin/python}"
DIST="${DIST:-dist}"
WORK="${WORK:-build/pyinstaller}"

"$PYTHON" -m PyInstaller --noconfirm --log-level WARN \
    --distpath "$DIST" --workpath "$WORK" installers/tokentrace.spec

bundle="$DIST/tokentrace"
version="$("$bundle/tokentrace" --version | cut -d' ' -f2)"
cp installers/linux/install.sh installers/linux/tokentrace.desktop resources/icons/tokentrace.png \
    "$bundle/"
name="tokentrace-${version}-linux-$(uname -m)"
tar -C "$DIST" -czf "$DIST/${name}.tar.gz" --transform "s,^tokentrace,${name}," tokentrace
echo "Built $bundle/ ($(du -sh "$bundle" | cut -f1)) and $DIST/${name}.tar.gz" \
     "($(du -sh "$DIST/${name}.tar.gz" | cut -f1))"
