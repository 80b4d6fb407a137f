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


# Files whose tests create or count machine-wide things (network namespaces, sshd's /run/sshd, the
# Slurm daemons) and check that none is left: under pytest-xdist they all run on one worker, one after
# another, so no other test's live namespace is counted. (Shared-memory checks count only segments whose
# server is gone: tests/test_ps.py orphan_segments.)
MACHINE_WIDE = {"test_cluster.py", "test_colocate.py", "test_delay.py", "test_hostile.py",
                "test_hosts.py", "test_options.py", "test_slurm.py", "test_ssh.py"}
MACHINE_WIDE_TESTS = {"test_on_an_emulated_link_both_plots_draw_the_reports_link_time",
                      "test_notebook_runs[03_estimate_then_measure.ipynb]"}


import pytest


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which reads the group marks
def pytest_collection_modifyitems(config, items):
    """Marks the machine-wide tests as one xdist group and moves them first: the group is the longest
    unit of work, so the other worker shares out the rest while it runs instead of waiting at the end."""
    machine_wide = [item for item in items
                    if item.path.name in MACHINE_WIDE or {item.name, item.originalname} & MACHINE_WIDE_TESTS]
    for item in machine_wide:
        item.add_marker(pytest.mark.xdist_group("machine-wide"))
    chosen = set(map(id, machine_wide))
    items[:] = machine_wide + [item for item in items if id(item) not in chosen]
