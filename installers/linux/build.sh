#!/usr/bin/env bash
# Build the Linux one-folder bundle and its tarball:
#   dist/tokentrace/                              the bundle (run dist/tokentrace/tokentrace)
#   dist/tokentrace-VERSION-linux-ARCH.tar.gz     what a clinician downloads
# Usage: installers/linux/build.sh [PYTHON]   (PYTHON: the build venv's python, default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${1:-.venv/bin/python}"

"$PYTHON" -m PyInstaller --noconfirm --log-level WARN \
    --distpath dist --workpath build/pyinstaller installers/tokentrace.spec

version="$(dist/tokentrace/tokentrace --version | cut -d' ' -f2)"
cp installers/linux/install.sh installers/linux/tokentrace.desktop dist/tokentrace/
cp resources/icons/tokentrace.png dist/tokentrace/
name="tokentrace-${version}-linux-$(uname -m)"
tar -C dist -czf "dist/${name}.tar.gz" --transform "s,^tokentrace,${name}," tokentrace
echo "Built dist/tokentrace/ ($(du -sh dist/tokentrace | cut -f1)) and dist/${name}.tar.gz ($(du -sh "dist/${name}.tar.gz" | cut -f1))"
