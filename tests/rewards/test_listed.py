"""The set-up installs the reward plugins: `gdmd list-plugins` lists all four SD3 rewards."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def test_list_plugins_shows_the_sd3_rewards_with_their_distributions():
    gdmd = shutil.which("gdmd", path=str(Path(sys.executable).parent)) or "gdmd"
    result = subprocess.run([gdmd, "list-plugins", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    rewards = {
        c["name"]: (c["distribution"], c["plugin"])
        for c in listing["components"]
        if c["kind"] == "reward"
    }
    assert rewards["clip"][0] == "gdmd" and rewards["pickscore"][0] == "gdmd"
    assert rewards["hpsv2"] == ("gdmd-hpsv2", "hpsv2")
    assert rewards["imagereward"] == ("gdmd-imagereward", "imagereward")
    assert listing["failures"] == []
