"""Imported first by the CLI: model loads print progress bars, load reports and deprecation
notices meant for notebooks; a server's log and a command's output should carry our own lines.
Must run before transformers is imported anywhere."""

import os
import warnings

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
