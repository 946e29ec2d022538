"""TokenTrace's compute core: models, prompting, generation, attribution and the record.

Importing ``engine`` forces the Hugging Face libraries offline and installs the in-process guard
that refuses non-loopback connections, before anything can import transformers. The engine never
imports Qt or ``desktop`` (an import-linter contract checks it).
"""

from __future__ import annotations

import os

from engine.offline import install_network_guard, set_offline_switches

set_offline_switches()
install_network_guard()
# Progress is reported through TaskState; transformers' own tqdm bars (GGUF dequantizing) would
# only garble the terminal and logs. tqdm reads this when it is first imported.
os.environ.setdefault("TQDM_DISABLE", "1")

__version__ = "0.1.0"
