"""Where Numba's on-disk cache goes: keyed by the source hash and the vector width, under
NUMBA_CACHE_DIR when set, never an unwritable place."""
import tempfile
from pathlib import Path

import numba

from gpu_inject.kernels import _jit, vecmath


def test_cache_dir_is_keyed_by_sources_and_falls_back_when_unwritable(monkeypatch, tmp_path):
    before = numba.config.CACHE_DIR
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    try:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        got = Path(_jit.configure_numba_cache())
        assert got == tmp_path / "gpu_inject" / f"numba-{_jit.source_hash()}-w{vecmath.WIDTH}"
        blocked = tmp_path / "file"
        blocked.write_text("not a folder")
        monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
        got = Path(_jit.configure_numba_cache())
        assert got.parent.parent == Path(tempfile.gettempdir()) and got.is_dir()
        # a user's NUMBA_CACHE_DIR is where it goes, keyed the same way
        monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
        got = Path(_jit.configure_numba_cache())
        assert got == (tmp_path / "mine" / "gpu_inject"
                       / f"numba-{_jit.source_hash()}-w{vecmath.WIDTH}")
    finally:
        numba.config.CACHE_DIR = before


def test_source_hash_changes_when_any_source_changes(tmp_path):
    (tmp_path / "physics").mkdir()
    src = tmp_path / "physics" / "lens.py"
    src.write_text("A = 1\n")
    (tmp_path / "other.py").write_text("B = 2\n")
    h = _jit.source_hash(tmp_path)
    assert h == _jit.source_hash(tmp_path) and len(h) == 16
    src.write_text("A = 2\n")
    assert _jit.source_hash(tmp_path) != h
