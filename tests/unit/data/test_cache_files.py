"""The cache folder's housekeeping: temporaries, the size cap, info and clear (and their CLI)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from torchgraft.cli import app
from torchgraft.data import cache_files
from torchgraft.errors import UserError

HOUR = 3600.0
K = [f"{i:x}" * 24 for i in range(1, 8)]  # entry keys, as the cache names them
A, B, C, D = "a" * 24, "b" * 24, "c" * 16, "d" * 24


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test is a new process as far as the cache knows: no entry in use."""
    monkeypatch.setattr(cache_files, "_in_use", set())
    monkeypatch.delenv(cache_files.LIMIT_VARIABLE, raising=False)


def dead_pid() -> int:
    """The pid of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write(path: Path, size: int, age: float = 0.0) -> Path:
    """A file of `size` bytes, last modified `age` seconds ago, in a tagged cache folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cache_files._tag(path.parent.parent)
    path.write_bytes(b"x" * size)
    when = time.time() - age
    os.utime(path, (when, when))
    return path


def test_temporaries_of_dead_or_old_writers_are_removed_and_live_ones_kept(
    tmp_path: Path,
) -> None:
    host, dead = cache_files._host(), dead_pid()
    images, features, digests = tmp_path / "images", tmp_path / "features", tmp_path / "digests"
    here = f"{host}-{cache_files._pid_namespace()}"
    stale = {
        write(images / f".{K[0]}.npy.a1b2.tmp-{here}-{dead}", 1000),  # killed on this host
        write(features / f".{K[1]}.safetensors.c3.tmp-elsewhere-4-12", 10, age=25 * HOUR),
        write(images / f"{K[2]}.npy.partial-{dead}", 10, age=25 * HOUR),  # an old version's
        write(digests / f".{C}.json.x9.tmp", 10, age=25 * HOUR),  # no pid, old
    }
    live = {
        write(images / f".{K[3]}.npy.d4.tmp-{here}-{os.getpid()}", 10),  # this process writes
        write(features / f".{K[4]}.safetensors.e5.tmp-elsewhere-4-12", 10, age=HOUR),
        write(digests / f".{C}.json.y8.tmp", 10),  # no pid, just made
        # Same host name, another pid namespace (a container): its pids are not ours.
        write(images / f".{K[5]}.npy.f6.tmp-{host}-1{cache_files._pid_namespace()}-{dead}", 10),
        write(images / f".{K[6]}.npy.g7.tmp-{host}-{dead}", 10),  # namespace not named
    }
    entry = write(images / f"{K[0]}.npy", 10)
    assert set(cache_files.temporaries(tmp_path)) == stale | live
    cache_files.tidy(tmp_path)
    assert set(cache_files.temporaries(tmp_path)) == live
    assert entry.exists()


def test_a_failed_write_leaves_neither_the_final_name_nor_a_temporary(tmp_path: Path) -> None:
    target = tmp_path / "features" / f"{A}.safetensors"
    with pytest.raises(RuntimeError), cache_files.cache_write(target) as temporary:
        temporary.write_bytes(b"half")
        assert temporary.name.endswith(cache_files.temporary_suffix(os.getpid()))
        assert not target.exists()
        raise RuntimeError("killed")
    assert list(target.parent.iterdir()) == []
    assert cache_files.is_cache(tmp_path)  # writing to it made it a cache folder


def make_entries(root: Path) -> dict[str, Path]:
    """Four entries of 100 bytes each, last used 4, 3, 2 and 1 hours ago."""
    write(root / "images" / f"{A}.npy", 60, age=4 * HOUR)
    return {
        "old-images": write(root / "images" / f"{A}.json", 40, age=4 * HOUR),
        "old-features": write(root / "features" / f"{B}.safetensors", 100, age=3 * HOUR),
        "digests": write(root / "digests" / f"{C}.json", 100, age=2 * HOUR),
        "new-features": write(root / "features" / f"{D}.safetensors", 100, age=1 * HOUR),
    }


def test_least_recently_used_entries_go_beyond_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = make_entries(tmp_path)
    monkeypatch.setenv(cache_files.LIMIT_VARIABLE, "250B")
    evicted = cache_files.enforce_limit(tmp_path)
    assert [(entry.kind, entry.name) for entry in evicted] == [("images", A), ("features", B)]
    assert not (tmp_path / "images" / f"{A}.npy").exists() and not files["old-images"].exists()
    assert files["digests"].exists() and files["new-features"].exists()
    assert sum(entry.size for entry in cache_files.entries(tmp_path)) <= 250


def test_entries_this_process_uses_are_never_evicted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    files = make_entries(tmp_path)
    cache_files.mark_used(files["old-features"])  # memory-mapped by this run, say
    old = time.time() - 5 * HOUR
    os.utime(files["old-features"], (old, old))  # ... and used long ago: the oldest now
    monkeypatch.setenv(cache_files.LIMIT_VARIABLE, "50B")
    cache_files.enforce_limit(tmp_path)
    assert [entry.name for entry in cache_files.entries(tmp_path)] == [B]
    assert "more than its 50 B cap, all in use by this run" in caplog.text


def test_read_entries_count_as_recently_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = make_entries(tmp_path)
    cache_files.mark_used(files["old-images"])
    cache_files._in_use.clear()  # another process now: only the time of use counts
    monkeypatch.setenv(cache_files.LIMIT_VARIABLE, "250B")
    cache_files.enforce_limit(tmp_path)
    assert {entry.name for entry in cache_files.entries(tmp_path)} == {A, D}


@pytest.mark.parametrize(
    ("text", "size"),
    [("20GB", 20 * 10**9), ("500 mb", 500 * 10**6), ("1.5T", 15 * 10**11), ("2GiB", 2 << 30),
     ("123", 123), ("none", None)],
)  # fmt: skip
def test_the_cap_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, size: int | None
) -> None:
    monkeypatch.setenv(cache_files.LIMIT_VARIABLE, text)
    assert cache_files.size_limit(tmp_path) == size


def test_a_bad_cap_names_the_variable_and_the_default_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = cache_files.size_limit(tmp_path / "not" / "made" / "yet")
    assert default is not None and 0 < default <= cache_files.DEFAULT_LIMIT
    monkeypatch.setenv(cache_files.LIMIT_VARIABLE, "lots")
    with pytest.raises(UserError, match=r"TORCHGRAFT_CACHE_MAX_SIZE='lots' is not a size.*20GB"):
        cache_files.size_limit(tmp_path)


def graft(*args: str) -> Result:
    """`graft cache ARGS`, in this process (a subprocess would spend seconds importing)."""
    return CliRunner().invoke(app, ["cache", *args])


def test_graft_cache_info_and_clear_by_kind_and_age(tmp_path: Path) -> None:
    make_entries(tmp_path)
    suffix = cache_files.temporary_suffix(dead_pid())
    stale = write(tmp_path / "images" / f".{K[0]}.npy.z{suffix}", 7)
    shown = graft("info", "--cache-dir", str(tmp_path))
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert str(tmp_path) in lines[0] and "cap" in lines[0]
    assert [line.split()[:2] for line in lines[1:5]] == [
        ["images", "1"], ["features", "2"], ["digests", "1"], ["total", "4"]
    ]  # fmt: skip
    assert "400 B" in lines[4] and "1 temporary file(s), 7 B" in lines[5]

    folder = ("--cache-dir", str(tmp_path))
    cleared = graft("clear", "--kind", "features", "--older-than", "2h", *folder)
    assert cleared.exit_code == 0, cleared.output
    assert f"removed features/{B} (100 B" in cleared.stdout
    assert f"features/{D}" not in cleared.stdout
    assert f"removed stale temporary {stale}" in cleared.stdout
    assert {entry.name for entry in cache_files.entries(tmp_path)} == {A, C, D}

    everything = graft("clear", "--cache-dir", str(tmp_path))
    assert "removed 3 entries (300 B)" in everything.stdout
    assert cache_files.entries(tmp_path) == []


def test_graft_cache_clear_refuses_a_bad_kind_or_age(tmp_path: Path) -> None:
    make_entries(tmp_path)
    refusals = [
        (("--kind", "pixels"), "unknown cache kind 'pixels'"),
        (("--older-than", "soon"), "--older-than 'soon' is not an age"),
    ]
    for args, message in refusals:
        refused = graft("clear", *args, "--cache-dir", str(tmp_path))
        assert refused.exit_code == 2 and message in refused.output
    assert len(cache_files.entries(tmp_path)) == 4  # nothing removed


def project_files(root: Path) -> list[Path]:
    """A project folder a cache setting might point at by mistake: photos, a stray .tmp."""
    return [
        write(root / "images" / "cat.jpg", 50, age=48 * HOUR),
        write(root / "images" / ".cat.jpg.backup.tmp", 50, age=48 * HOUR),
        write(root / "features" / "notes.json", 50, age=48 * HOUR),
    ]


def test_housekeeping_deletes_only_the_names_the_cache_makes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = project_files(tmp_path)  # beside real entries, in a tagged cache folder
    make_entries(tmp_path)
    assert cache_files.temporaries(tmp_path) == []
    assert len(cache_files.entries(tmp_path)) == 4
    monkeypatch.setenv(cache_files.LIMIT_VARIABLE, "1B")
    cache_files.tidy(tmp_path)
    cache_files.enforce_limit(tmp_path)
    cache_files.clear(tmp_path)
    assert cache_files.entries(tmp_path) == [] and all(path.exists() for path in files)


def test_a_folder_without_the_cache_tag_is_never_cleared_or_evicted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_entries(tmp_path)
    (tmp_path / cache_files.TAG_FILE).unlink()  # a folder that only looks like a cache
    refused = graft("clear", "--cache-dir", str(tmp_path))
    assert refused.exit_code == 2 and "CACHEDIR.TAG" in refused.output
    monkeypatch.setenv(cache_files.LIMIT_VARIABLE, "1B")
    assert cache_files.enforce_limit(tmp_path) == []
    assert len(cache_files.entries(tmp_path)) == 4  # nothing removed


def test_cache_info_survives_a_temporary_renamed_while_it_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temporary = write(tmp_path / "images" / f".{A}.npy.q{cache_files.temporary_suffix(1)}", 7)
    listing = cache_files.temporaries
    # Its writer renames it into place just after the folder was listed.
    monkeypatch.setattr(cache_files, "temporaries", lambda root: [*listing(root), temporary])
    temporary.rename(tmp_path / "images" / f"{A}.npy")
    # ... and at any moment after that: even between a check that it exists and its stat.
    exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda path: path == temporary or exists(path))
    shown = graft("info", "--cache-dir", str(tmp_path))
    assert shown.exit_code == 0, shown.output
    assert "1 temporary file(s), 0 B" in shown.stdout
