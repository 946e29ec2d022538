"""Entry point of the frozen TokenTrace bundle (PyInstaller).

``tokentrace`` with no arguments opens the window, as a double-click on the application should;
with arguments it is the ``tokentrace`` command (``explain``, ``app``, ``batch``, ...).
"""

import multiprocessing
import sys

from desktop.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()  # benchmarks and Captum may spawn helper processes
    sys.exit(main(sys.argv[1:] or ["app"]))
