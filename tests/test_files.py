"""keys/files.py's one atomic write (issue 11, item 8), the one error hierarchy and the one version."""

import os
import stat

import pytest

from keys import files
from keys.files import atomic_write


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _listing(directory):
    return sorted(p.name for p in directory.iterdir())


def test_short_writes_are_continued(tmp_path, monkeypatch):
    real_write = os.write
    calls = []

    def one_byte(fd, data):
        calls.append(len(data))
        return real_write(fd, bytes(data[:1]))

    monkeypatch.setattr(os, "write", one_byte)
    data = bytes(range(256)) * 3
    atomic_write(tmp_path / "f", data)
    monkeypatch.undo()
    assert (tmp_path / "f").read_bytes() == data
    assert len(calls) == len(data)  # one call per byte: every short write was continued
    assert _listing(tmp_path) == ["f"]


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_failure_keeps_the_old_content_and_leaves_no_temp_file(tmp_path, monkeypatch, failing):
    path = tmp_path / "registry.json"
    atomic_write(path, b"old\n", mode=0o644)

    def boom(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError):
        atomic_write(path, b"new content\n", mode=0o644)
    monkeypatch.undo()
    assert path.read_bytes() == b"old\n"
    assert _listing(tmp_path) == ["registry.json"]


def test_failure_removes_a_fixed_temp_file(tmp_path, monkeypatch):
    path, tmp = tmp_path / "commands.jsonl", tmp_path / "commands.jsonl.compact"
    path.write_bytes(b"old\n")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        atomic_write(path, b"new\n", tmp=tmp)
    monkeypatch.undo()
    assert path.read_bytes() == b"old\n" and not tmp.exists()
    atomic_write(path, b"new\n", tmp=tmp)
    assert path.read_bytes() == b"new\n" and not tmp.exists()


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o640])
def test_mode_is_the_one_asked_for(tmp_path, umask_022, mode):
    path = tmp_path / "f"
    atomic_write(path, b"x", mode=mode)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    path.chmod(0o666)  # replacing a file gives the new one the mode asked for, not the old one's
    atomic_write(path, b"y", mode=mode)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_the_umask_still_narrows_the_mode(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "f", b"x", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o600


def test_fsyncs_the_file_and_the_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(tmp_path / "f", b"x")
    assert synced == [False, True]  # the file, then its directory after the rename
    synced.clear()
    atomic_write(tmp_path / "g", b"x", durable=False)
    assert synced == []


def test_exclusive_never_replaces(tmp_path):
    path = tmp_path / "secrets.key"
    atomic_write(path, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        atomic_write(path, b"second", exclusive=True)
    assert path.read_bytes() == b"first"
    assert _listing(tmp_path) == ["secrets.key"]


def test_crash_hook_sees_each_stage(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    seen = []

    def hook(stage):
        seen.append((stage, path.read_bytes()))

    atomic_write(path, b"new", crash_at=hook)
    assert seen == [("written", b"old"), ("replaced", b"new")]


def test_write_all_continues_short_writes(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        files.write_all(fd, b"0123456789")
    finally:
        os.close(fd)
    monkeypatch.undo()
    assert (tmp_path / "f").read_bytes() == b"0123456789"


# -- one error hierarchy ---------------------------------------------------------

def test_one_error_hierarchy():
    from actors import secretstore
    from actors.business_data.models import MoneyError
    from actors.eventlog import CorruptLog, LogLocked
    from proto import errors

    assert secretstore.InsecureKeyFile is errors.InsecureKeyFile  # one class, not two
    assert secretstore.SecretStoreError is errors.SecretError
    assert secretstore.WrongKey is errors.WrongKey and secretstore.UnknownSecret is errors.UnknownSecret
    for cls in (errors.InsecureKeyFile, errors.WrongKey, errors.UnknownSecret, MoneyError, CorruptLog, LogLocked):
        assert issubclass(cls, errors.DctrlError), cls
    # what callers caught before still catches them
    assert issubclass(errors.InsecureKeyFile, errors.ConfigError) and issubclass(errors.InsecureKeyFile, PermissionError)
    assert issubclass(errors.InsecureKeyFile, errors.SecretError)
    assert issubclass(MoneyError, ValueError) and issubclass(CorruptLog, ValueError)
    assert issubclass(LogLocked, RuntimeError) and issubclass(errors.UnknownSecret, KeyError)


def test_read_secret_file_raises_the_one_insecure_key_file(tmp_path):
    from actors.secretstore import InsecureKeyFile

    path = tmp_path / "k"
    path.write_bytes(b"secret")
    path.chmod(0o644)
    with pytest.raises(InsecureKeyFile):
        files.read_secret_file(path)


# -- one version -------------------------------------------------------------------

def test_version_comes_from_the_package_metadata():
    from importlib import metadata

    from actors import runtime
    from proto import version

    assert version.VERSION == metadata.version("dctrl") == runtime.VERSION
    assert version.VERSION == version._from_source_tree()  # setup.cfg is where it is set


def test_version_of_a_source_tree_not_installed(monkeypatch):
    from importlib import metadata

    from proto import version

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert version.version() == version._from_source_tree() != version.UNKNOWN
