"""`forensics.whatif(...)` (README: "from Python `forensics.whatif(run, 0, [...])`") stays the
function after a first call or any `forensics.whatif.*` import; before, the second call raised
"TypeError: 'module' object is not callable"."""

import subprocess
import sys


def test_forensics_whatif_is_callable_after_its_subpackage_is_imported():
    code = ("import forensics, forensics.whatif.changes\n"
            "from forensics.whatif.api import whatif\n"
            "assert callable(forensics.whatif)\n"
            "try:\n    forensics.whatif('/nonexistent-run', 0)\n"
            "except TypeError as e:\n    raise SystemExit(f'TypeError: {e}')\n"
            "except Exception:\n    pass\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
