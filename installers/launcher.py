"""Entry point of the frozen TokenTrace bundle (PyInstaller).

``tokentrace`` with no arguments opens the window, as a double-click on the application should;
with arguments it is the ``tokentrace`` command (``explain``, ``app``, ``batch``, ...).
"""

import multiprocessing
import sys

from desktop.cli import main
from engine.models import CONVERT_FLAG, convert_in_child

if __name__ == "__main__":
    multiprocessing.freeze_support()  # benchmarks and Captum may spawn helper processes
    if sys.argv[1:2] == [CONVERT_FLAG]:  # the GGUF converter's child process (engine.models)
        sys.exit(convert_in_child(sys.argv[2:]))
    sys.exit(main(sys.argv[1:] or ["app"]))
