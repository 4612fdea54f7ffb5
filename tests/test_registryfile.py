"""The registry's files on their own (core/registryfile.py): the journal's
lines, its crash rules, compaction; no consoles, no Twisted.

A "crash" is a new read of the files as a step left them.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from vdsmconsole.core import registryfile
from vdsmconsole.core.registryfile import (
    BROKEN,
    Journal,
    RegistryFile,
    journal_path,
    read,
    record,
)


class Endpoint:
    """What the files keep of a graphics endpoint."""

    def __init__(self, port: int, password: str = "") -> None:
        self.port, self.password = port, password

    def to_persist(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"type": "vnc", "host": "127.0.0.1", "port": self.port}
        if self.password:
            shown["password"] = self.password
        return shown


def entry(console: dict[str, Any]) -> dict[str, Any]:
    return console


def make(tmp_path: Path) -> RegistryFile[dict[str, Any]]:
    return RegistryFile(tmp_path / "registry.json", entry)


def state_of(tmp_path: Path) -> dict[str, Any]:
    state = read(tmp_path / "registry.json")
    assert state is not None
    return state.as_json()


def lines(tmp_path: Path) -> list[bytes]:
    return (tmp_path / "registry.journal").read_bytes().splitlines()


TCP = {"type": "tcp", "host": "127.0.0.1", "port": 4555}
UNIX = {"type": "unix", "path": "/run/a.sock"}


def test_each_change_appends_one_line_of_the_vms_whole_record(tmp_path: Path) -> None:
    """A change is one JSON line (console, graphics, or gone) and the snapshot
    is not written; the files read back as the changes left the registry."""
    files = make(tmp_path)
    files.change("a", TCP, [Endpoint(5900, "pw")])
    files.change("b", UNIX, None)
    files.change("c", None, [Endpoint(5901)])
    files.change("a", UNIX, None)
    files.change("b", None, None)
    assert [json.loads(x) for x in lines(tmp_path)] == [
        {"vm": "a", "console": TCP, "graphics": [Endpoint(5900, "pw").to_persist()]},
        {"vm": "b", "console": UNIX},
        {"vm": "c", "graphics": [Endpoint(5901).to_persist()]},
        {"vm": "a", "console": UNIX},
        {"vm": "b", "gone": True},
    ]
    assert files.records == 5 and not (tmp_path / "registry.json").exists()
    assert state_of(tmp_path) == {
        "version": 1,
        "consoles": {"a": UNIX},
        "graphics": {"c": [Endpoint(5901).to_persist()]},
    }


def test_the_journal_is_0600_whatever_mode_it_had(tmp_path: Path) -> None:
    """The journal holds VNC passwords: 0600 when created (whatever the
    umask) and when a crash left one with another mode."""
    old = os.umask(0)
    try:
        make(tmp_path).change("a", None, [Endpoint(5900, "pw")])
    finally:
        os.umask(old)
    journal = tmp_path / "registry.journal"
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    os.chmod(journal, 0o644)
    make(tmp_path).change("b", TCP, None)
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600


def test_compaction_writes_the_snapshot_and_empties_the_journal(
    tmp_path: Path,
) -> None:
    """compact: registry.json alone (in the old format) holds everything,
    the journal is empty, and both read back the same."""
    files = make(tmp_path)
    files.change("a", TCP, [Endpoint(5900, "pw")])
    files.change("b", UNIX, None)
    before = state_of(tmp_path)
    files.compact({"a": TCP, "b": UNIX}, {"a": [Endpoint(5900, "pw")]})
    assert (tmp_path / "registry.journal").read_bytes() == b""
    assert files.records == 0
    snapshot = json.loads((tmp_path / "registry.json").read_text())
    assert snapshot == before
    assert stat.S_IMODE((tmp_path / "registry.json").stat().st_mode) == 0o600
    assert state_of(tmp_path) == before


def test_the_snapshot_has_no_graphics_key_without_graphics(tmp_path: Path) -> None:
    """Without graphics the snapshot is exactly what servers before graphics
    wrote, and a snapshot-only file of the old format reads as it is."""
    files = make(tmp_path)
    files.compact({"a": TCP}, {})
    assert json.loads((tmp_path / "registry.json").read_text()) == {
        "version": 1,
        "consoles": {"a": TCP},
    }
    old = {"version": 1, "consoles": {"x": UNIX}, "graphics": {"x": [{"t": 1}]}}
    (tmp_path / "registry.json").write_text(json.dumps(old))
    state = read(tmp_path / "registry.json")
    assert state is not None and state.as_json() == old and state.records == 0


def test_neither_file_reads_as_none(tmp_path: Path) -> None:
    """No snapshot and no journal: nothing to restore."""
    assert read(tmp_path / "registry.json") is None


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    """A crash mid-append: a last line without its newline, or one that does
    not parse, was never acknowledged; it is reported once and ignored."""
    files = make(tmp_path)
    files.change("a", TCP, None)
    whole = (tmp_path / "registry.journal").read_bytes()
    cut = record("b", UNIX, None)
    for torn in (cut[:-1], cut[:10], cut[:10] + b"\n"):
        (tmp_path / "registry.journal").write_bytes(whole + torn)
        state = read(tmp_path / "registry.json")
        assert state is not None
        assert state.consoles == {"a": TCP} and state.records == 2
        assert len(state.problems) == 1 and "line 2 ignored" in state.problems[0]
        assert "never acknowledged" in state.problems[0]


def test_a_bad_line_in_the_middle_is_skipped_and_the_rest_kept(
    tmp_path: Path,
) -> None:
    """A line that is not a record, before the last: reported (without its
    content: it may hold a password) and skipped; later lines still count."""
    files = make(tmp_path)
    files.change("a", TCP, None)
    good = (tmp_path / "registry.journal").read_bytes()
    bad = [
        b'{"vm": "x", "graphics": [{"password": "s3cret"}]',
        b'["vm"]',
        b'{"vm": 7, "gone": true}',
        b'{"vm": "a", "gone": true, "console": {}}',
        b'{"vm": "a"}',
        b'{"vm": "a", "colour": 1}',
        b"\xff\xfe",
    ]
    (tmp_path / "registry.journal").write_bytes(
        good + b"\n".join(bad) + b"\n" + record("b", UNIX, None)
    )
    state = read(tmp_path / "registry.json")
    assert state is not None
    assert state.consoles == {"a": TCP, "b": UNIX}
    assert state.records == 1 + len(bad) + 1
    assert state.problems == [
        f"journal line {n} skipped: not a registry record"
        for n in range(2, 2 + len(bad))
    ]
    assert "s3cret" not in repr(state.problems)


@pytest.mark.parametrize(
    "step", ["snapshot renamed", "journal emptied", "a temporary file left"]
)
def test_a_crash_anywhere_in_compaction_reads_back_the_same(
    tmp_path: Path, step: str
) -> None:
    """Records are absolute: the new snapshot with the whole journal still
    beside it (a crash before the truncation), or the old snapshot with it
    (a crash before the rename), reads as the registry did."""
    files = make(tmp_path)
    files.compact({"old": TCP}, {})
    files.change("a", TCP, [Endpoint(5900)])
    files.change("old", None, None)
    files.change("a", UNIX, None)
    files.change("b", UNIX, [Endpoint(5901)])
    before = state_of(tmp_path)
    journal = (tmp_path / "registry.journal").read_bytes()
    consoles, graphics = {"a": UNIX, "b": UNIX}, {"b": [Endpoint(5901)]}
    if step == "a temporary file left":  # before the rename: a half .tmp
        (tmp_path / "registry.json.tmp").write_text('{"version": 1, "cons')
    else:
        files.compact(consoles, graphics)
        if step == "snapshot renamed":  # the truncation never happened
            (tmp_path / "registry.journal").write_bytes(journal)
    assert state_of(tmp_path) == before
    again = make(tmp_path)
    assert again.read() is not None
    again.compact(consoles, graphics)
    assert json.loads((tmp_path / "registry.json").read_text()) == before


class FailingWrite:
    """os.write that writes ``keep`` bytes of the data, then fails (ENOSPC),
    as a disk filling up mid-line does."""

    def __init__(self, keep: int) -> None:
        self.keep = keep

    def __call__(self, fd: int, data: bytes) -> int:
        if self.keep:
            os.write(fd, data[: self.keep])
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("short", [None, 9, 1])
def test_a_failed_append_leaves_the_journal_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short: int | None
) -> None:
    """An append that fails part-way raises, and is cut off the file: the
    next append is read back whole, the failed one never."""
    files = make(tmp_path)
    files.change("a", TCP, None)
    before = (tmp_path / "registry.journal").read_bytes()
    line = record("b", UNIX, None)
    # Nothing written, or all but the last ``short`` bytes.
    keep = 0 if short is None else len(line) - short
    monkeypatch.setattr(files.journal, "_write", FailingWrite(keep))
    with pytest.raises(OSError):
        files.change("b", UNIX, None)
    assert (tmp_path / "registry.journal").read_bytes() == before
    monkeypatch.undo()
    files.change("c", UNIX, None)
    assert state_of(tmp_path)["consoles"] == {"a": TCP, "c": UNIX}


def test_a_piece_that_could_not_be_cut_off_never_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If even the cut fails, the next append ends the piece with a NUL so it
    never parses, even when it is a whole record short of its newline; the
    next record reads back whole."""
    files = make(tmp_path)
    files.change("a", TCP, None)
    line = record("b", UNIX, None)
    monkeypatch.setattr(files.journal, "_write", FailingWrite(len(line) - 1))

    def no_cut(fd: int, size: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(registryfile.os, "ftruncate", no_cut)
    with pytest.raises(OSError):
        files.change("b", UNIX, None)
    monkeypatch.undo()
    assert (tmp_path / "registry.journal").read_bytes().endswith(line[:-1])
    files.change("c", UNIX, None)
    journal = (tmp_path / "registry.journal").read_bytes()
    assert journal.endswith(line[:-1] + BROKEN + record("c", UNIX, None))
    state = read(tmp_path / "registry.json")
    assert state is not None and state.consoles == {"a": TCP, "c": UNIX}
    assert state.problems == ["journal line 2 skipped: not a registry record"]


def test_an_append_needs_its_directory(tmp_path: Path) -> None:
    """The journal is opened for each append: a state directory gone from
    under the server fails the change rather than writing nowhere."""
    state = tmp_path / "state"
    state.mkdir()
    journal = Journal(journal_path(state / "registry.json"))
    journal.append(record("a", TCP, None))
    (state / "registry.journal").unlink()
    state.rmdir()
    with pytest.raises(FileNotFoundError):
        journal.append(record("b", TCP, None))
    assert journal.records == 1


def test_compaction_is_due_past_max_256_and_the_vms(tmp_path: Path) -> None:
    """due: more records than max(256, VMs), so compaction costs O(1) per
    change whatever the registry's size."""
    files = make(tmp_path)
    for n in range(256):
        files.change(f"vm-{n % 3}", TCP, None)
    assert not files.due(3) and not files.due(1000)
    files.change("vm-0", TCP, None)
    assert files.due(3) and files.due(256) and not files.due(257)


def test_a_new_journal_whose_directory_entry_fails_keeps_no_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first append also makes the new file's name durable (an fsync of
    the directory); if that fails the change is refused and its line cut
    off, so it cannot come back at the next start."""

    def failing(directory: Path) -> None:
        raise OSError(5, "Input/output error")

    files = make(tmp_path)
    monkeypatch.setattr(registryfile, "_fsync_dir", failing)
    with pytest.raises(OSError):
        files.change("a", TCP, None)
    assert (tmp_path / "registry.journal").read_bytes() == b""
    assert files.records == 0
    monkeypatch.undo()
    files.change("b", TCP, None)
    assert state_of(tmp_path)["consoles"] == {"b": TCP}
