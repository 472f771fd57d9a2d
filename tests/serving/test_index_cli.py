"""``clickloop index build`` and ``index search`` in a subprocess, with the real MiniLM
weights: a catalog with bad rows is built from its good rows, a title finds its item, and
every refusal is one ``error:`` line with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

from tests.serving.test_cli import clickloop


def test_build_keeps_the_good_rows_and_search_finds_a_title(tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    titles = ["acme navy wool coat", "kestrel red leather boot", "umbra grey cotton hoodie",
              "fjell olive canvas bag", "lumen white linen shirt"]
    lines = ["item_id,title"] + [f"p{i},{t}" for i, t in enumerate(titles)]
    lines += [",no id", "p1,again", "007,", "008,one,field too many"]
    latin1 = b"009,caf\xe9 latte\n"  # not UTF-8
    items.write_bytes("\n".join(lines).encode() + b"\n" + latin1)
    out, cache = tmp_path / "index", tmp_path / "cache"
    built = clickloop("index", "build", "--items", str(items), "--out", str(out),
                      "--cache-dir", str(cache), "-q")
    assert built.returncode == 0, built.stderr
    for problem in ("5 rows rejected", "row 6, column 'item_id': empty",
                    "row 7, column 'item_id': 'p1' repeats an earlier row",
                    "row 8, column 'title': empty", "row 9, column 'title': 3 fields, the "
                    "header has 2", "row 10, column 'title': not UTF-8 text"):
        assert problem in built.stderr, built.stderr
    assert "Flat" in built.stdout and "index of 5 items" in built.stdout
    assert {p.name for p in out.iterdir()} >= {"index.faiss", "ids.json", "metadata.json",
                                               "items.parquet"}
    found = clickloop("index", "search", str(out), "red lether boots", "linen shirt", "-k", "2",
                      "--exclude", "p0", "--json")
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


def test_ids_are_kept_as_written(tmp_path: Path) -> None:
    from serving.catalog import read_items

    (tmp_path / "c.csv").write_text("item_id,title,price\n007,a,1\n1e3,b,x\n0012,c,2.5\n")
    items, rejected = read_items(str(tmp_path / "c.csv"), ["price"])
    assert items["item_id"].to_list() == ["007", "0012"]
    assert items["price"].to_list() == [1.0, 2.5]
    assert rejected == ["row 2, column 'price': not a number"]


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
    for args, words in ((("build", "--world", "5", "--recall-k", "0"), "--recall-k=0 must be"),
                        (("build", "--world", "5", "--batch-size", "0"), "--batch-size=0 must"),
                        (("search", "nowhere", "q", "-k", "5", "--retrieve", "2"),
                         "--retrieve=2 must be at least -k=5")):
        refused = clickloop("index", *args, *(("--out", str(tmp_path / "y"))
                                              if args[0] == "build" else ()))
        assert refused.returncode == 2 and words in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
