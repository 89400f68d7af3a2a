"""twohead.folders.check_writable: an output folder that cannot be made fails with one line, and the check leaves
nothing behind."""

from __future__ import annotations

import os

import pytest

from twohead.folders import OutputFolderError, check_writable


def test_a_new_nested_folder_is_fine_and_nothing_is_created(tmp_path):
    target = tmp_path / "a" / "b"
    assert check_writable(target) == target
    assert list(tmp_path.iterdir()) == []  # neither the folder nor the probe it made stays


def test_an_existing_folder_is_fine_and_keeps_only_its_files(tmp_path):
    (tmp_path / "kept.txt").write_text("x")
    check_writable(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["kept.txt"]


def test_a_file_on_the_way_is_named(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputFolderError, match=r"^--out .*afile/runs: .*afile is a file, not a folder; choose another --out$"):
        check_writable(tmp_path / "afile" / "runs", "--out")


def test_a_folder_that_refuses_new_entries_is_named():
    # /proc takes no new folders, even for root (whom permission bits do not stop)
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux /proc")
    with pytest.raises(OutputFolderError, match=r"^--work /proc/twohead-x/runs: cannot write in /proc \(.+\); choose a folder"):
        check_writable("/proc/twohead-x/runs", "--work")
