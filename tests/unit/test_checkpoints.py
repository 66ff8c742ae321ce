"""SQLite files are checkpointed by the process's checkpoint thread, never by a commit."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from services.bus import db


def rows_in_the_file_alone(path: Path, tmp_path: Path) -> int:
    """What the database file holds without its WAL (what checkpoints have copied into it)."""
    alone = tmp_path / "alone.db"
    shutil.copyfile(path, alone)
    conn = sqlite3.connect(alone)
    try:
        found = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'notes'").fetchone()[0]
        return int(conn.execute("SELECT count(*) FROM notes").fetchone()[0]) if found else 0
    finally:
        conn.close()


def test_commits_leave_the_checkpoints_to_the_checkpointer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoints = db.Checkpointer(background=False)
    monkeypatch.setattr(db, "CHECKPOINTS", checkpoints)
    path = tmp_path / "books.db"
    engine = db.make_engine(f"sqlite:///{path}")
    assert checkpoints.paths == {str(path)}
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    for start in range(0, 3000, 100):  # ~3,000 pages in 30 commits: past SQLite's own threshold (1,000)
        with engine.begin() as c:
            c.exec_driver_sql("INSERT INTO notes (id, body) VALUES " + ", ".join(
                f"({i}, '{'x' * 4000}')" for i in range(start, start + 100)))
    assert rows_in_the_file_alone(path, tmp_path) == 0  # every page still in the WAL only
    checkpoints.run_once()
    assert rows_in_the_file_alone(path, tmp_path) == 3000
    with engine.begin() as c:  # readers and writers go on as before
        c.exec_driver_sql("INSERT INTO notes (id, body) VALUES (3000, 'after')")
        assert c.exec_driver_sql("SELECT count(*) FROM notes").scalar_one() == 3001
    engine.dispose()
    path.unlink()
    checkpoints.run_once()
    assert checkpoints.paths == set()  # a file that is gone is forgotten


def test_memory_databases_are_not_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoints = db.Checkpointer(background=False)
    monkeypatch.setattr(db, "CHECKPOINTS", checkpoints)
    db.make_engine("sqlite://")
    db.make_engine("sqlite:///:memory:")
    assert checkpoints.paths == set()
