"""The clickloop command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.broker import free_port, port_open
from ingest.codec import encode
from ingest.events import Click
from ingest.logstore import scan

ROOT = Path(__file__).resolve().parents[2]


def clickloop(*args: str, cwd: Path = ROOT, timeout: float = 120,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serving.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "120", **(env or {})})


@pytest.mark.parametrize(("command", "words"), [
    ((), "replay"),
    (("run",), "embedded broker"),
    (("broker",), "Ctrl-C"),
    (("consume",), "DLQ"),
    (("replay",), "--map FIELD=COLUMN"),
    (("dlq",), "--max"),
    (("simulate",), "--search-sessions"),
    (("index", "build"), "--memory-budget-mb"),
    (("index", "search"), "--ranker ARTIFACT"),
])
def test_every_command_explains_itself(command: tuple[str, ...], words: str) -> None:
    result = clickloop(*command, "--help")
    assert result.returncode == 0 and words in result.stdout


def test_every_subcommand_and_option_has_help_text() -> None:
    import argparse

    from serving.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helped = {choice.dest for choice in commands._choices_actions if choice.help}
    assert helped == set(commands.choices)
    for name, sub in [("clickloop", parser), *commands.choices.items()]:
        bare = [a.dest for a in sub._actions
                if not a.help and not isinstance(a, argparse._SubParsersAction)]
        assert not bare, f"{name}: options without help: {bare}"


@pytest.mark.parametrize(("name", "content", "words"), [
    ("empty.csv", b"", "the file is empty"),
    ("empty.jsonl", b"", "the file is empty"),
    ("cut.parquet", b"PAR1\x15\x04", "not a readable parquet file"),
])
def test_an_unreadable_file_is_one_error_line_and_exit_2(
        tmp_path: Path, name: str, content: bytes, words: str) -> None:
    (tmp_path / name).write_bytes(content)
    result = clickloop("replay", str(tmp_path / name), "--to", "parquet", "--out",
                       str(tmp_path / "s"), "--map", "user_id=u", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / name}: {words}"), line


def test_user_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    missing = clickloop("replay", str(tmp_path / "nope.csv"), "--to", "parquet", "--out",
                        str(tmp_path / "s"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    no_broker = clickloop("consume", env={"CLICKLOOP_KAFKA_BOOTSTRAP": ""})
    assert no_broker.returncode == 2 and "CLICKLOOP_KAFKA_BOOTSTRAP" in no_broker.stderr
    bad_setting = clickloop("consume", env={"CLICKLOOP_KAFKA_PARTITIONS": "lots"})
    assert bad_setting.returncode == 2 and "CLICKLOOP_KAFKA_PARTITIONS" in bad_setting.stderr
    bad_map = clickloop("replay", str(tmp_path), "--to", "parquet", "--out", "x",
                        "--map", "user_id")
    assert bad_map.returncode == 2 and "FIELD=COLUMN" in bad_map.stderr


def test_replay_command_writes_the_store_and_reports(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"\n".join(encode(Click(event_id=f"e{i}", ts=float(i), user_id="u",
                                            request_id="r", item_id="a", position=1))
                               for i in range(500)) + b"\n{oops}\n")
    result = clickloop("replay", str(log), "--to", "parquet", "--out", str(tmp_path / "s"),
                       "--rejects", str(tmp_path / "rejects.jsonl"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "501" in result.stdout and "1 rejected" in result.stderr  # results, diagnostics
    assert scan(tmp_path / "s", "click").collect().height == 500
    assert "not valid JSON" in (tmp_path / "rejects.jsonl").read_text()
    parallel = clickloop("replay", str(log), "--to", "parquet", "--out", str(tmp_path / "p"),
                         "--workers", "2", "--rejects", str(tmp_path / "p.jsonl"), cwd=tmp_path)
    assert parallel.returncode == 0, parallel.stderr
    assert scan(tmp_path / "p", "click").collect().equals(scan(tmp_path / "s", "click").collect())
    assert (tmp_path / "p.jsonl").read_text() == (tmp_path / "rejects.jsonl").read_text()
    negative = clickloop("replay", str(log), "--to", "parquet", "--out", "x", "--workers", "-1",
                         cwd=tmp_path)
    assert negative.returncode == 2 and "workers=-1 must be >= 0" in negative.stderr


def test_simulate_command_writes_a_log_that_joins_back(tmp_path: Path) -> None:
    from ingest.joins import join_log

    store = tmp_path / "sim"
    result = clickloop("simulate", "--to", "parquet", "--out", str(store), "--impressions",
                       "3000", "--search-sessions", "200", "--items", "500", "--slots", "5",
                       "--policy", "epsilon-greedy", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    queries = scan(store, "query").collect()
    assert 200 <= queries.height <= 200 * 4  # one per search step, up to 3 reformulations
    joined = join_log(store).collect()
    assert joined.height == (3000 + queries.height) * 5
    assert joined["propensity"].is_between(0, 1, closed="right").all()
    bad = clickloop("simulate", "--to", "parquet", "--out", str(store), "--candidates", "3",
                    "--slots", "5", cwd=tmp_path)
    assert bad.returncode == 2 and "--candidates=3 must be between" in bad.stderr


def test_broker_command_listens_and_stops_on_ctrl_c() -> None:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "serving.cli", "broker", "--port",
                                str(port)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == f"127.0.0.1:{port}"  # printed once up
        assert port_open("127.0.0.1", port)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert not port_open("127.0.0.1", port)


@pytest.mark.kafka
def test_quickstart_job_reconciles_end_to_end(tmp_path: Path) -> None:
    result = clickloop("run", "--impressions", "3000", "--workdir", str(tmp_path / "run"),
                       "--bandit-rounds", "4", env={"CLICKLOOP_KAFKA_BOOTSTRAP": ""},
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # Exit 0 means counters reconciled, every planted message reached the DLQ and every
    # resent duplicate was dropped; the report says so too.
    assert re.search(r"dead letters: ([1-9]\d*) of \1 planted", result.stdout)
    assert (tmp_path / "run" / "quickstart.png").stat().st_size > 10_000
    # The rankers' table: the propensity-weighted ranker above the naive one.
    ndcg = dict(re.findall(r"│\s+(naive|propensity-weighted)\s+│[^│]+│\s+([0-9.]+)\s+│",
                           result.stdout))
    assert float(ndcg["propensity-weighted"]) > float(ndcg["naive"]), result.stdout[-3000:]
    # The online bandits learned through Kafka (a round is applied once a later round's
    # events close its click window, so updates come in four rounds, as many as the rounds'
    # pace allows) and serve better than random slates.
    assert (tmp_path / "run" / "bandits.png").stat().st_size > 10_000
    arms = {name: (float(clicks), updates) for name, clicks, updates in re.findall(
        r"│ (linucb|epsil\S*|random)\s+│\s+([0-9.]+)\s+│(?:[^│]+│){4}\s+(\S+)\s+│",
        result.stdout)}
    assert int(arms["linucb"][1]) >= 1 and arms["random"][1] == "-", arms
    assert min(arms["linucb"][0], arms["epsilon-greedy"][0]) > arms["random"][0], arms
    # Query rewrites mined from the search sessions' own log store, with their confidence.
    mined = re.search(r"query rewrites mined from 4,000 search sessions \(([\d,]+) queries, "
                      r"([\d,]+) reformulations\)", " ".join(result.stdout.split()))
    assert mined and int(mined[2].replace(",", "")) > 100, result.stdout[-3000:]
    assert "no trained LLM rewriter" in result.stdout


def test_propensity_command_estimates_the_examination_curve_of_a_simulated_log(
        tmp_path: Path) -> None:
    from simulation.clicks import examination

    # Search sessions too, whose engine always orders a query's results alike: their slots
    # cannot tell position from relevance and must not pull the estimate.
    store = tmp_path / "sim"
    simulated = clickloop("simulate", "--to", "parquet", "--out", str(store), "--impressions",
                          "20000", "--items", "200", "--users", "100", "--slots", "5",
                          "--candidates", "20", "--policy", "uniform", "--search-sessions",
                          "3000", "-q", cwd=tmp_path)
    assert simulated.returncode == 0, simulated.stderr
    result = clickloop("propensity", "--data", str(store), "--positions", "5",
                       "--reference-policy", "uniform-random", "--plot",
                       str(tmp_path / "p.png"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [line.split("│")[1:-1] for line in result.stdout.splitlines()
            if re.match(r"^│\s+\d ", line)]
    estimated = [float(row[2]) for row in rows]
    truth = examination(5) / examination(5)[0]
    assert len(rows) == 5 and all(abs(e / t - 1) < 0.10 for e, t in zip(estimated, truth,
                                                                          strict=True))
    assert "effective sample size" in result.stdout and (tmp_path / "p.png").stat().st_size
    unknown = clickloop("propensity", "--data", str(store), "--reference-policy", "nope",
                        "--plot", str(tmp_path / "q.png"), cwd=tmp_path)
    assert unknown.returncode == 2 and "no impressions of that policy" in unknown.stderr


def test_train_command_writes_an_artifact_that_loads(tmp_path: Path) -> None:
    from models.artifacts import load

    store = tmp_path / "sim"
    simulated = clickloop("simulate", "--to", "parquet", "--out", str(store), "--impressions",
                          "3000", "--items", "100", "--users", "50", "--slots", "5", "-q",
                          cwd=tmp_path)
    assert simulated.returncode == 0, simulated.stderr
    trained = clickloop("train", "rel-mf", "--data", str(store), "--out",
                        str(tmp_path / "artifacts" / "rel-mf"), "--epochs", "2", "--dim", "8",
                        "-q", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert re.search(r"trained rel-mf on [\d,]+ clicked pairs of 50 users", trained.stdout)
    assert "val_loss" in trained.stdout
    assert "GPU available" not in trained.stderr  # Lightning's chatter stays out
    artifact = load(tmp_path / "artifacts" / "rel-mf", tmp_path / "artifacts", kind="rel-mf")
    assert len(artifact.user_ids or []) == 50 and artifact.metadata["metrics"]["val_loss"] > 0
    unknown = clickloop("train", "nope", "--data", str(store), "--out", "x", cwd=tmp_path)
    assert unknown.returncode == 2 and "MODEL='nope' is not one of" in unknown.stderr


def test_train_a_search_ranker_from_a_search_log_and_its_catalog(tmp_path: Path) -> None:
    """The rankers learn from the log's result lists with text features of the catalog's
    titles; the simulated engine always shows a query's results in one order, so the
    position curve must be given, or learned by DLA, and the command says so."""
    from models.artifacts import load

    store, catalog = tmp_path / "sim", tmp_path / "items.csv"
    simulated = clickloop("simulate", "--to", "parquet", "--out", str(store), "--impressions",
                          "0", "--search-sessions", "1500", "--items", "500", "--users", "100",
                          "--catalog", str(catalog), "-q", cwd=tmp_path)
    assert simulated.returncode == 0, simulated.stderr
    assert catalog.read_text().startswith("item_id,title\ni0,")
    common = ("--data", str(store), "--items", str(catalog), "--epochs", "3", "-q")
    unidentified = clickloop("train", "ips-listwise", *common, "--out", "x", cwd=tmp_path)
    assert unidentified.returncode == 2
    assert "cannot tell position from relevance" in unidentified.stderr, unidentified.stderr
    curve = "1,0.9,0.7,0.5,0.41,0.29,0.16,0.15,0.12,0.09"
    artifacts = tmp_path / "artifacts"
    for kind, extra in (("ips-listwise", ("--examination", curve, "--target", "graded")),
                        ("dla", ())):
        trained = clickloop("train", kind, *common, *extra, "--out", str(artifacts / kind),
                            cwd=tmp_path)
        assert trained.returncode == 0, trained.stderr
        assert re.search(rf"trained {kind} on [\d,]+ result lists with 3 features",
                         trained.stdout), trained.stdout
        assert "examination by position" in trained.stdout
        artifact = load(artifacts / kind, artifacts, kind=kind)
        assert artifact.feature_names == ["bm25", "tfidf_cosine", "token_overlap"]
        assert artifact.metadata["features"]["catalog"]["file"] == "items.csv"
        assert artifact.metadata["features"]["target"] == ("graded" if extra else "clicks")
    missing = clickloop("train", "dla", "--data", str(store), "--out", "x", cwd=tmp_path)
    assert missing.returncode == 2 and "--items FILE" in missing.stderr
    for bad, words in (("1,x", "must be comma-separated numbers"), ("1,0.5", "needs 10 values")):
        refused = clickloop("train", "ips-pairwise", *common, "--examination", bad, "--out", "x",
                            cwd=tmp_path)
        assert refused.returncode == 2 and words in refused.stderr, refused.stderr


def test_train_a_recommender_on_a_ratings_dataset(tmp_path: Path) -> None:
    """A triplet dataset with one bad row: the row is reported with its line and the
    others train; ratings of 4 and up are the clicks."""
    from models.artifacts import load

    data = tmp_path / "ratings"
    data.mkdir()
    lines = ["user,item,rating"] + [f"{u},{(u * 7 + j) % 40},{1 + (u + j) % 5}"
                                    for u in range(30) for j in range(8)]
    (data / "train.csv").write_text("\n".join(lines[:5] + ["3,9,five"] + lines[5:]) + "\n")
    (data / "test.csv").write_text("\n".join(lines[:50]) + "\n")
    trained = clickloop("train", "bpr", "--data", str(data), "--out", str(tmp_path / "a" / "bpr"),
                        "--epochs", "2", "--dim", "4", "-q", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "train.csv: 1 rows rejected; the first, line 6:" in trained.stderr
    assert "five" in trained.stderr
    artifact = load(tmp_path / "a" / "bpr", tmp_path / "a", kind="bpr")
    assert sorted(artifact.user_ids or [], key=int) == [str(u) for u in range(30)]
    ranker = clickloop("train", "dla", "--data", str(data), "--out", "x", cwd=tmp_path)
    assert ranker.returncode == 2 and "a ratings dataset trains the recommenders" in ranker.stderr
    # Ratings of 4 and up are the clicks: the artifact knows only users who gave one.
    strict = clickloop("train", "mf", "--data", str(data), "--threshold", "5", "--out",
                       str(tmp_path / "a" / "mf"), "--epochs", "1", "--dim", "4", "-q",
                       cwd=tmp_path)
    assert strict.returncode == 0, strict.stderr
    fives = sum(line.endswith(",5") for line in lines[1:])
    fours = sum(line.endswith(",4") for line in lines[1:])
    assert f"trained mf on {fives} clicked pairs of 30 users" in strict.stdout, strict.stdout
    assert f"trained bpr on {fives + fours} clicked pairs of 30 users" in trained.stdout
    (tmp_path / "file").write_text("")
    refused = clickloop("train", "mf", "--data", str(data), "--out", str(tmp_path / "file"),
                        cwd=tmp_path)
    assert refused.returncode == 2 and "is a file; the artifact is a folder" in refused.stderr


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("store") / "sim"
    simulated = clickloop("simulate", "--to", "parquet", "--out", str(store), "--impressions",
                          "2000", "--items", "100", "--users", "50", "--slots", "5", "-q")
    assert simulated.returncode == 0, simulated.stderr
    return store


@pytest.mark.parametrize(("args", "words"), [
    (("propensity", "--floor", "0"), "--floor=0.0 must be in (0, 1]"),
    (("propensity", "--positions", "0"), "--positions=0 must be at least 1"),
    (("propensity", "--plot", "x.xyz"), "the suffix must be one of"),
    (("train", "mf", "--epochs", "0", "--out", "a"), "--epochs=0 must be at least 1"),
    (("train", "mf", "--dim", "0", "--out", "a"), "cannot train mf: "),
    (("train", "mf", "--batch-size", "0", "--out", "a"), "cannot train mf: "),
    (("train", "mf", "--devices", "abc", "--out", "a"), "cannot train mf: "),
    (("train", "mf", "--strategy", "bogus", "--out", "a"), "cannot train mf: "),
    (("train", "mf", "--strategy", "ddp_spawn", "--out", "a"), "use --strategy ddp"),
    (("train", "dla", "--items", "nowhere.csv", "--out", "a"), "--items nowhere.csv: cannot"),
])
def test_bad_model_options_are_one_error_line(small_store: Path, tmp_path: Path,
                                              args: tuple[str, ...], words: str) -> None:
    result = clickloop(*args, "--data", str(small_store), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and words in result.stderr, result.stderr


@pytest.mark.slow
def test_train_with_two_ddp_processes_reports_once_and_writes_one_artifact(
        small_store: Path, tmp_path: Path) -> None:
    """`--devices 2 --strategy ddp` on CPU (gloo): Lightning starts the second process by
    running `python -m serving.cli train ...` again; only rank 0 reports and saves."""
    from models.artifacts import load

    trained = clickloop("train", "mf", "--data", str(small_store), "--out",
                        str(tmp_path / "artifacts" / "mf"), "--epochs", "3", "--dim", "8",
                        "--batch-size", "64", "--accelerator", "cpu", "--devices", "2",
                        "--strategy", "ddp", "-q", cwd=tmp_path, timeout=240,
                        env={"OMP_NUM_THREADS": "1", "COLUMNS": "1000"})  # one line
    assert trained.returncode == 0 and "Traceback" not in trained.stderr, trained.stderr
    lines = trained.stdout.splitlines()
    assert len(lines) == 1 and re.match(r"trained mf on [\d,]+ clicked pairs of 50 users",
                                        lines[0]), trained.stdout
    assert not trained.stderr.strip(), trained.stderr  # no rank's chatter either
    artifact = load(tmp_path / "artifacts" / "mf", tmp_path / "artifacts", kind="mf")
    assert artifact.metadata["metrics"]["val_loss"] > 0
