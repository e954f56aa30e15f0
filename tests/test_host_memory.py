import platform
import subprocess
import sys

import pytest

from megathread_jax import host_memory

GLIBC = platform.libc_ver()[0] == "glibc"


def test_thp_mode_read_from_the_kernel_file(tmp_path):
    mode_file = tmp_path / "enabled"
    mode_file.write_text("always [madvise] never\n")
    assert host_memory.transparent_huge_page_mode(str(mode_file)) == "madvise"
    assert host_memory.transparent_huge_page_mode(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not GLIBC, reason="the tunable is glibc's")
def test_tunable_added_only_where_it_changes_something():
    env = host_memory.environment_with_huge_pages({"PATH": "/bin"}, "madvise")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    kept = host_memory.environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise")
    assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert host_memory.environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise") is None
    assert host_memory.environment_with_huge_pages({}, "always") is None
    assert host_memory.environment_with_huge_pages({}, "never") is None
    assert host_memory.environment_with_huge_pages({}, None) is None


def test_entry_point_restarts_itself_once_with_the_tunable(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    script = (
        "import os; from megathread_jax import host_memory; "
        "host_memory.reexec_with_huge_pages(); print('tunables=' + os.environ.get('GLIBC_TUNABLES', ''))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    # One line: the restarted process does not restart again.
    expected = "glibc.malloc.hugetlb=1" if GLIBC and host_memory.transparent_huge_page_mode() == "madvise" else ""
    assert out.splitlines() == [f"tunables={expected}"]
