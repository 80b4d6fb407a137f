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
