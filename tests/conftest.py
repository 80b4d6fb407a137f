"""What every test shares: the decoded-data cache (parsgd.data.cache) in a fresh folder of this session,
so no test reads or fills the user's ~/.cache/parsgd/decoded, and processes a test starts inherit it."""
from __future__ import annotations

import os
import shutil
import tempfile

CACHE_DIR = tempfile.mkdtemp(prefix="parsgd-test-cache-")
os.environ["PARSGD_CACHE_DIR"] = CACHE_DIR


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(CACHE_DIR, ignore_errors=True)


# Tests that create or count machine-wide things (network namespaces, sshd's /run/sshd, the Slurm
# daemons) and check that none is left carry the mark xdist_group("machine-wide") (a module's
# pytestmark, or the test's own): under pytest-xdist (--dist loadgroup) they all run on one worker, one
# after another, so no other test's live namespace is counted. The marks are set where the tests are:
# a hook that adds them here runs after pytest-xdist's own in some pytest versions (9.2), which then
# ignores them. (Shared-memory checks count only segments whose server is gone: test_ps.orphan_segments.)


def pytest_collection_modifyitems(config, items):
    """Moves the machine-wide group first: it is the longest unit of work, so the other worker shares
    out the rest while it runs instead of waiting at the end."""
    def machine_wide(item) -> bool:
        return any(m.args[:1] == ("machine-wide",) for m in item.iter_markers("xdist_group"))
    items[:] = [item for item in items if machine_wide(item)] + [item for item in items if not machine_wide(item)]
