import pytest

from geossm.tasks.graph.datasets.cache import cache_copy


def test_cache_copy_skips_fresh_files(tmp_path):
    src = tmp_path / "src" / "a.txt"
    src.parent.mkdir()
    src.write_text("abc")
    cache_copy([src], tmp_path / "src", tmp_path / "dst")
    dst = tmp_path / "dst" / "a.txt"
    mtime = dst.stat().st_mtime_ns
    cache_copy([src], tmp_path / "src", tmp_path / "dst")
    assert dst.read_text() == "abc" and dst.stat().st_mtime_ns == mtime
    with pytest.raises(FileNotFoundError, match="b.txt"):
        cache_copy([tmp_path / "src" / "b.txt"], tmp_path / "src", tmp_path / "dst")
