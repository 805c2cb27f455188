"""The one atomic writer: a folder or file appears whole under its name, or the old one stays."""

from __future__ import annotations

import json

import pytest

from deepfield._atomic import staged_dir, write_atomic, write_json_atomic


def test_staged_folder_replaces_the_old_one_only_when_complete(tmp_path):
    final = tmp_path / "out" / "index"
    with staged_dir(final) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (final / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError), staged_dir(final) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed half way")
    assert (final / "a.txt").read_text() == "first"  # the old folder is untouched
    assert sorted(p.name for p in final.parent.iterdir()) == ["index"]  # and nothing is left beside it
    with staged_dir(final) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]  # replaced whole, not merged


def test_file_written_by_a_failing_writer_keeps_the_old_file(tmp_path):
    path = tmp_path / "meta.json"
    write_json_atomic(path, {"n": 3}, indent=2, sort_keys=True)
    assert json.loads(path.read_text()) == {"n": 3} and path.read_text().endswith("}\n")

    def failing(tmp):
        tmp.write_text('{"n": ')
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomic(path, failing)
    assert json.loads(path.read_text()) == {"n": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]
