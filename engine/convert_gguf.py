"""``python -m engine.convert_gguf GGUF FOLDER SHA256 PID``: the child process that dequantizes a
GGUF into a cache entry (see :func:`engine.models.convert_in_child`). Not a user command."""

import sys

from engine.models import convert_in_child

if __name__ == "__main__":
    sys.exit(convert_in_child(sys.argv[1:]))
