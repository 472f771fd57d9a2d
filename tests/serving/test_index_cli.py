"""``clickloop index build`` and ``index search`` in a subprocess, with the real MiniLM
weights: a catalog with bad rows is built from its good rows, a title finds its item, and
every refusal is one ``error:`` line with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from tests.serving.test_cli import clickloop


def test_build_keeps_the_good_rows_and_search_finds_a_title(tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    titles = ["acme navy wool coat", "kestrel red leather boot", "umbra grey cotton hoodie",
              "fjell olive canvas bag", "lumen white linen shirt"]
    rows = [{"item_id": f"p{i}", "title": t} for i, t in enumerate(titles)]
    rows += [{"item_id": "", "title": "no id"}, {"item_id": "p1", "title": "again"}]
    pl.DataFrame(rows).write_csv(items)
    out, cache = tmp_path / "index", tmp_path / "cache"
    built = clickloop("index", "build", "--items", str(items), "--out", str(out),
                      "--cache-dir", str(cache), "-q")
    assert built.returncode == 0, built.stderr
    assert "2 rows rejected; the first: row 6, column 'item_id': empty" in built.stderr
    assert "Flat" in built.stdout and "index of 5 items" in built.stdout
    assert {p.name for p in out.iterdir()} >= {"index.faiss", "ids.json", "metadata.json",
                                               "items.parquet"}
    found = clickloop("index", "search", str(out), "red lether boots", "linen shirt", "-k", "2",
                      "--exclude", "p0", "--cache-dir", str(cache), "--json")
    assert found.returncode == 0, found.stderr
    answers = [json.loads(line) for line in found.stdout.splitlines()]
    assert [a["items"][0]["item_id"] for a in answers] == ["p1", "p4"]
    assert answers[0]["items"][0]["title"] == "kestrel red leather boot"
    assert {i["stage"] for a in answers for i in a["items"]} == {"retrieve"}
    assert all(len(a["items"]) == 2 and "p0" not in {i["item_id"] for i in a["items"]}
               for a in answers)

    again = clickloop("index", "build", "--items", str(items), "--out", str(out))
    assert again.returncode == 2 and f"--out {out} is not empty" in again.stderr
    assert again.stderr.count("\n") == 1


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    missing = clickloop("index", "build", "--items", str(tmp_path / "none.csv"), "--out",
                        str(tmp_path / "x"))
    assert missing.returncode == 2 and "cannot read it" in missing.stderr
    (tmp_path / "wrong.csv").write_text("id,name\n1,a\n")
    wrong = clickloop("index", "build", "--items", str(tmp_path / "wrong.csv"), "--out",
                      str(tmp_path / "x"))
    assert wrong.returncode == 2 and "has no column 'item_id'" in wrong.stderr
    nothing = clickloop("index", "search", str(tmp_path / "nowhere"), "coat")
    assert nothing.returncode == 2 and "error:" in nothing.stderr
