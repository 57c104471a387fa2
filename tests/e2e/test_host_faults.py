"""A host fault is never a finding: a full disk under the harness's own state save.

The image cache sits on a 120 MiB tmpfs holding the image (88 MiB), too small for the
guest's saved state (~80 MiB).  The save fails (``cat: write error: No space left on
device``) and QEMU says so on stderr (``failed to save SaveStateEntry ...``, ``Unable
to write to command: Broken pipe``), lines it wrote because the harness asked it to
save.  Before this fix those lines were judged as QEMU's trouble "outside every
observation" and every row failed (exit 1, the code CI files as a QEMU regression),
and an empty state directory was left in the cache.  Now the lines are quoted in the
save's one warning, the rows are judged on their own observations and pass, and no
state directory is left.

The tmpfs lives in a mount namespace of the run's own (``unshare -m``), so it goes
away with the run whatever happens.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from .helpers import REPO, harness_argv, needs_qemu, needs_root
from .leaks import Sandbox, kept_log_dirs

SMALL_CACHE_MIB = 120
RUN = ["run", "--accel", "tcg", "--modes", "remap,warn", "--checks", "ids", "--cache", "none",
       "--layout", "standard", "--no-control", "--no-witness"]

# In its own mount namespace: a small tmpfs as the cache, the default image copied in,
# the run, then what the states directory holds.
SCRIPT = """\
set -u
mount -t tmpfs -o size={size}M,mode=0700 tmpfs {cache}
{python} -c 'import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; \
from tests.e2e.helpers import private_image_cache; private_image_cache(Path(sys.argv[2]))' \
{repo} {cache}
MDH_CACHE_DIR={cache} {run}
rc=$?
echo "STATES: $(ls -A {cache}/states 2>&1 | tr '\\n' ' ')"
echo "FREE-KIB: $(df -k --output=avail {cache} | tail -1)"
exit $rc
"""


@needs_root
@needs_qemu
@pytest.mark.timeout(240)
def test_a_state_save_that_fills_the_disk_is_a_warning_not_a_finding(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "sandbox")
    cache = tmp_path / "cache"
    cache.mkdir()
    script = SCRIPT.format(size=SMALL_CACHE_MIB, cache=shlex.quote(str(cache)),
                           python=shlex.quote(sys.executable), repo=shlex.quote(str(REPO)),
                           run=shlex.join(harness_argv(*RUN)))
    result = sandbox.run([], timeout=200, argv=["unshare", "-m", "--propagation", "private",
                                                "sh", "-c", script])
    err = result.stderr
    assert result.returncode == 0, f"rc {result.returncode}\n{result.stdout}\n{err}"
    warnings = [line for line in err.splitlines() if "could not save the guest state" in line]
    assert len(warnings) == 1, err
    assert "cat: write error: No space left on device" in warnings[0]
    assert "QEMU said, of the save:" in warnings[0]
    assert re.search(r"^remap .* PASS$", result.stdout, re.M), result.stdout
    assert re.search(r"^warn .* PASS$", result.stdout, re.M), result.stdout
    assert "2/2 rows passed" in result.stdout
    assert "outside every observation" not in result.stdout
    states = re.search(r"^STATES: (.*)$", result.stdout, re.M)
    assert states is not None and states.group(1).strip() == "", result.stdout
    assert list(cache.iterdir()) == [], "the tmpfs must have gone with its namespace"
    sandbox.assert_clean(allowed=kept_log_dirs(err))
