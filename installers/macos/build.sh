#!/usr/bin/env bash
# Build TokenTrace.app and a drag-to-Applications disk image on macOS (run it on a Mac; it
# cannot be built on Linux). Produces:
#   dist/TokenTrace.app                          the application (windowed; double-click)
#   dist/tokentrace/tokentrace                   the same bundle's command line
#   dist/TokenTrace-VERSION-macos-ARCH.dmg       what a clinician downloads
# Usage: installers/macos/build.sh [PYTHON]   (default .venv/bin/python; `make installer` does this)
# Signing and notarization need the team's Apple Developer ID: set CODESIGN_IDENTITY to sign.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${1:-.venv/bin/python}"

"$PYTHON" -m PyInstaller --noconfirm --log-level WARN \
    --distpath dist --workpath build/pyinstaller installers/tokentrace.spec

if [ -n "${CODESIGN_IDENTITY:-}" ]; then
    codesign --deep --force --options runtime --timestamp \
        --sign "$CODESIGN_IDENTITY" dist/TokenTrace.app
fi

version="$(dist/tokentrace/tokentrace --version | cut -d' ' -f2)"
name="TokenTrace-${version}-macos-$(uname -m)"
staging="build/dmg"
rm -rf "$staging" && mkdir -p "$staging"
cp -R dist/TokenTrace.app "$staging/"
ln -s /Applications "$staging/Applications"
hdiutil create -volname "TokenTrace ${version}" -srcfolder "$staging" -ov -format UDZO \
    "dist/${name}.dmg"
echo "Built dist/TokenTrace.app and dist/${name}.dmg ($(du -sh "dist/${name}.dmg" | cut -f1))"
