#!/usr/bin/env bash
# Install TokenTrace for this user, from the unpacked tarball: the bundle goes to
# ~/.local/opt/tokentrace, the command to ~/.local/bin/tokentrace, and a menu entry is added.
# No administrator rights and no network are needed. Remove with: install.sh --uninstall
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="$HOME/.local/opt/tokentrace"
bin="$HOME/.local/bin"
apps="${XDG_DATA_HOME:-$HOME/.local/share}/applications"

if [ "${1:-}" = "--uninstall" ]; then
    rm -rf "$target" "$bin/tokentrace" "$apps/tokentrace.desktop"
    echo "TokenTrace removed."
    exit 0
fi

mkdir -p "$target" "$bin" "$apps"
cp -a "$here/." "$target/"
ln -sf "$target/tokentrace" "$bin/tokentrace"
sed "s,@TARGET@,$target,g" "$here/tokentrace.desktop" > "$apps/tokentrace.desktop"
echo "TokenTrace installed in $target."
echo "Open it from the applications menu, or run: tokentrace (window) / tokentrace explain --help"
