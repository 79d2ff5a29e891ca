"""Set-up shared by every test: tests never reach the Hugging Face Hub."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
# Models trained on first use go to a throw-away cache, never the user's ~/.cache/gdmd.
os.environ["GDMD_CACHE_DIR"] = tempfile.mkdtemp(prefix="gdmd-test-cache-")
