"""A hostile Maildir tree: links out of it, FIFOs and swaps are never read (issue 16)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from postroom import logs
from postroom.ops.importer import maildir

SECRET = b"root:$6$secret-hash:19000:0:99999:7:::\n"
MESSAGE = b"From: bob@example.org\nSubject: %s\n\nhello\n"


@pytest.fixture
def log(monkeypatch) -> io.StringIO:
    stream = io.StringIO()
    monkeypatch.setattr(logs._sink, "stream", stream)
    monkeypatch.setattr(logs._sink, "threshold", logs.LEVELS["info"])
    return stream


def skipped(stream: io.StringIO) -> dict[str, str]:
    """{path below the root: reason} of every ``maildir entry skipped`` event."""
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    return {e["path"]: e["reason"] for e in events if e["event"] == "maildir entry skipped"}


def folder(path: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def put(path: Path, subject: str) -> Path:
    path.write_bytes(MESSAGE % subject.encode())
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Files of someone else's: a secret and another user's Maildir."""
    other = tmp_path / "outside"
    other.mkdir()
    (other / "shadow").write_bytes(SECRET)
    put(folder(other / "bob") / "cur" / "1.M1.mx:2,S", "bob's private mail")
    return other


def subjects(folders: list) -> dict[str, list[bytes]]:
    return {f.name: [m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for m in f.messages]
            for f in folders}


def test_symlinked_files_and_folders_are_skipped_and_logged(tmp_path, outside, log):
    root = folder(tmp_path / "Maildir")
    put(root / "cur" / "1.M1.mx:2,S", "mine")
    (root / "cur" / "2.M2.mx:2,S").symlink_to(outside / "shadow")
    (root / "new" / "3.M3.mx").symlink_to(outside / "shadow")
    (root / ".Stolen").symlink_to(outside / "bob")             # a whole folder elsewhere
    sub = folder(root / ".Sub")
    (sub / "cur").rmdir()
    (sub / "cur").symlink_to(outside / "bob" / "cur")          # a folder's cur/ elsewhere
    put(root / "cur" / "4.M4.mx:2,S", "also mine")
    folders = maildir.scan(root)
    assert subjects(folders) == {"INBOX": [b"mine", b"also mine"]}
    assert skipped(log) == {
        str(root / "cur" / "2.M2.mx:2,S"): "symbolic link",
        str(root / "new" / "3.M3.mx"): "symbolic link",
        str(root / ".Stolen"): "symbolic link",
        str(root / ".Sub" / "cur"): "symbolic link",
    }


def test_a_file_swapped_for_a_link_after_the_listing_is_not_read(tmp_path, outside, log):
    root = folder(tmp_path / "Maildir")
    put(root / "cur" / "1.M1.mx:2,S", "first")
    victim = put(root / "cur" / "2.M2.mx:2,S", "second")
    [inbox] = maildir.scan(root)
    victim.unlink()
    victim.symlink_to(outside / "shadow")  # the race: after scan, before the read
    assert [m.data for m in inbox.messages] == [MESSAGE.replace(b"\n", b"\r\n") % b"first"]
    assert skipped(log) == {str(victim): "symbolic link"}


def test_a_fifo_is_skipped_without_waiting_for_a_writer(tmp_path, log):
    root = folder(tmp_path / "Maildir")
    os.mkfifo(root / "new" / "1.M1.mx")
    put(root / "new" / "2.M2.mx", "real")
    assert subjects(maildir.scan(root)) == {"INBOX": [b"real"]}
    assert skipped(log) == {str(root / "new" / "1.M1.mx"): "not a regular file"}


def test_a_root_whose_cur_is_a_link_is_not_a_maildir(tmp_path, outside, log):
    root = tmp_path / "Maildir"
    root.mkdir()
    (root / "new").mkdir()
    (root / "cur").symlink_to(outside / "bob" / "cur")
    with pytest.raises(maildir.NotAMaildir):
        maildir.scan(root)


def test_the_root_given_may_itself_be_a_link(tmp_path):
    real = folder(tmp_path / "real")
    put(real / "cur" / "1.M1.mx:2,S", "through the operator's link")
    (tmp_path / "link").symlink_to(real)
    assert subjects(maildir.scan(tmp_path / "link")) == {
        "INBOX": [b"through the operator's link"]}


@pytest.mark.parametrize("parts", [("..",), ("cur", ".."), ("cur/../..",), ("",), (".",)])
def test_names_that_climb_out_are_refused_by_open_beneath(tmp_path, parts):
    root = folder(tmp_path / "Maildir")
    with pytest.raises(OSError):
        os.close(maildir.open_beneath(str(root), parts, directory=True))
