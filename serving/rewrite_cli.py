"""``clickloop rewrite``: mine query reformulations from a log store, train the rewriters, and
ask the gated rewriter about a query.

- ``clickloop rewrite mine --data LOG [--top N] [--json OUT] [--out DIR]``: sessionize the
  log store's queries, clicks, dwell and reactions, mine (failed query, later query)
  reformulations, fit the absorbing-Markov rewriter and print its best rewrites, most seen
  first, with their counts, successes and beta-posterior confidence. ``--out DIR`` saves the
  rewriter's state as ``DIR/markov.json``.
- ``clickloop rewrite train --data LOG --out DIR [--steps N] [--dpo-steps N]
  [--base smollm2|tiny] (--world N [--seed S] | --index DIR)``: the same mining; the
  sessions of the last ``--validation`` share of the log's time are held out. The Markov
  rewriter is fitted on the rest, the LLM is LoRA-tuned (SFT) on the mined pairs whose
  rewrite succeeded, weighted by their confidence, beside queries that succeed as typed
  paired with themselves, then preference-tuned (DPO) with the retriever's feedback on the
  training failures (the settings of :mod:`models.rewrite.pipeline`); the gate calibrates
  both rewriters and picks its threshold on the held-out sessions. The retriever judges a
  rewrite by whether it retrieves, in its top 10, the item the user finally clicked: for a
  log of ``clickloop simulate`` it is the simulator's exact-word engine over the same world
  (``--world N --seed S``, the ``--items`` and ``--seed`` given to ``simulate``); for any
  other log, a ``clickloop index build`` folder (``--index DIR``) searched with its text encoder.
  ``--max-queries N`` bounds the failing queries sampled for DPO and the held-out queries
  the gate is calibrated on. Writes ``DIR/markov.json`` (fitted on the whole log),
  ``DIR/gate.json`` and the LLM artifact in ``DIR/llm``; the LLM is trained on the
  training part only, so that the held-out sessions judge it fairly.
- ``clickloop rewrite "blu cottn shirt" [--model DIR | --data LOG] [--json]``: the gate's
  decision for the query, with its reason, source and confidences: the Markov state of
  ``--model DIR`` (from ``mine --out`` or ``train --out``), its gate and its LLM when it has
  one; or a Markov rewriter mined from ``--data LOG`` on the spot.

A query spelled ``mine`` or ``train`` reads as the command; the first word decides.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ingest.settings import Settings

console = Console(stderr=True)
results = Console()

MARKOV_FILE = "markov.json"
GATE_FILE = "gate.json"
LLM_FOLDER = "llm"
#: Rank within which a rewrite must retrieve the clicked item to count as a success.
K = 10
MODES = ("mine", "train")
#: The options of each mode (dest names), to refuse one given to the wrong mode.
_OPTIONS = {
    "mine": {"data", "top", "json_out", "out"},
    "train": {"data", "out", "steps", "dpo_steps", "base", "world", "seed", "index",
              "batch_size", "validation", "max_queries"},
    "query": {"model", "data", "json_out", "threshold"},
}


class RewriteCliError(Exception):
    """A problem the user can fix; ``serving.cli`` prints it as one ``error:`` line."""


# ------------------------------------------------------------------------------ the log


def _read_steps(path: str | None) -> Any:
    """``query_outcomes`` rows of a log store folder, and its clicks."""
    from ingest.logstore import CHECKPOINT, scan
    from models.rewrite.mining import query_outcomes

    if not path:
        raise RewriteCliError("--data LOG is required: a parquet log store folder")
    folder = Path(path)
    if not folder.is_dir():
        raise RewriteCliError(f"--data {folder}: no such folder")
    if not (folder / CHECKPOINT).is_file():
        raise RewriteCliError(f"--data {folder} is not a clickloop log store (no "
                              f"{CHECKPOINT})")
    frames = {kind: scan(folder, kind) for kind in ("query", "click", "dwell", "reaction")}
    steps = query_outcomes(frames["query"], frames["click"], frames["dwell"],
                           frames["reaction"]).collect()
    if steps.is_empty():
        raise RewriteCliError(f"--data {folder} holds no queries to mine")
    return steps, frames["click"]


def _fit_markov(steps: Any, data: str) -> Any:
    from models.rewrite.markov import MarkovRewriter

    model = MarkovRewriter().fit(steps)
    if model.pairs_.is_empty() or not (model.pairs_["successes"] > 0).any():
        raise RewriteCliError(f"--data {data}: no reformulations mined (no failed query "
                              "followed by a successful one in the same session)")
    return model


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


def _top(model: Any, n: int) -> Any:
    import polars as pl

    return (model.rewrites_.sort(["count", "confidence", "query"],
                                 descending=[True, True, False])
            .head(n).select("query", "rewrite", "count", "successes", "failures",
                            "confidence", "absorption", pl.col("original_success")))


# ------------------------------------------------------------------------------ mine


def cmd_mine(args: argparse.Namespace) -> int:
    if args.top is not None and args.top < 1:
        raise RewriteCliError(f"--top={args.top} must be at least 1")
    with console.status("mining reformulations…"):
        steps, _ = _read_steps(args.data)
        model = _fit_markov(steps, args.data)
    top = _top(model, args.top or 20)
    table = Table(title=f"top {top.height} of {model.rewrites_.height:,} rewrites mined from "
                        f"{steps.height:,} queries ({model.pairs_.height:,} reformulations)")
    for name, justify in (("query", "left"), ("rewrite", "left"), ("count", "right"),
                          ("successes", "right"), ("confidence", "right"),
                          ("absorption", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in top.iter_rows(named=True):
        table.add_row(row["query"], row["rewrite"], f"{row['count']:,}",
                      f"{row['successes']:,}", f"{row['confidence']:.3f}",
                      f"{row['absorption']:.3f}")
    results.print(table)
    if args.json_out:
        _write_json(Path(args.json_out), top.to_dicts())
        console.print(f"{top.height} rewrites → {args.json_out}", highlight=False)
    if args.out:
        _write_json(Path(args.out) / MARKOV_FILE, model.state_dict())
        console.print(f"Markov rewriter → {Path(args.out) / MARKOV_FILE}", highlight=False)
    return 0


# ------------------------------------------------------------------------------ train


def _retriever(args: argparse.Namespace) -> Callable[[list[str]], Any] | None:
    """``retrieve(queries) -> (n, K)`` item ids, best first (see the module doc)."""
    import numpy as np

    if args.world is not None:
        from simulation.retrieval import exact_word_retrieve
        from simulation.world import World

        if args.world < K:
            raise RewriteCliError(f"--world={args.world} must be at least {K} items")
        world = World(n_items=args.world, n_users=1, seed=args.seed)
        names = np.array([f"i{n}" for n in range(world.n_items)], dtype=object)

        def simulated(queries: list[str]) -> Any:
            # Simulated events name items "i<index>" (simulation.simulator).
            return names[exact_word_retrieve(world, queries, K)]

        return simulated
    if args.index is not None:
        from models.embeddings import TextEncoder
        from ranking.index import IndexLoadError, VectorIndex

        try:
            index = VectorIndex.load(Path(args.index))
        except (IndexLoadError, FileNotFoundError) as exc:
            raise RewriteCliError(f"--index {args.index}: {exc}") from None
        encoder = TextEncoder()
        if index.model != encoder.name:
            raise RewriteCliError(f"--index {args.index} was built with {index.model!r}; "
                                  f"queries are encoded with {encoder.name!r}")
        if len(index) < K:
            raise RewriteCliError(f"--index {args.index} holds {len(index)} items, fewer "
                                  f"than {K}")

        def indexed(queries: list[str]) -> Any:
            ids, _ = index.search(encoder.encode(queries), K)
            # A row may come back short (fewer allowed items): pad it with no item.
            rows = [list(row)[:K] + [None] * (K - len(row[:K])) for row in ids]
            return np.array(rows, dtype=object).reshape(len(rows), K)

        return indexed
    return None


def _labelled(steps: Any, clicks: Any) -> Any:
    from models.rewrite.pipeline import labelled

    return labelled(steps, clicks)


def _split(steps: Any, share: float) -> tuple[Any, Any]:
    """Sessions starting in the last ``share`` of the log's time are held out."""
    import polars as pl

    start = steps.group_by("session_id").agg(start=pl.col("ts").min())
    cut = start["start"].min() + (1 - share) * (start["start"].max() - start["start"].min())
    late = start.filter(pl.col("start") > cut)["session_id"].implode()
    held = pl.col("session_id").is_in(late)
    return steps.filter(~held), steps.filter(held)


def _validation(markov: Any, llm: Any, held: Any, clicks: Any, retrieve: Any,
                gate: Any, limit: int) -> Any:
    """:func:`models.rewrite.pipeline.validation_rows`, judged in the top :data:`K`."""
    from models.rewrite.pipeline import validation_rows

    return validation_rows(markov, llm, held, clicks, retrieve, gate, limit, K)


def _base(args: argparse.Namespace) -> tuple[Any, Any]:
    from models.rewrite.llm import LLMNotInstalled, load_smollm2, load_tokenizer, tiny_llama

    try:
        tokenizer = load_tokenizer()
        model = tiny_llama(tokenizer, seed=args.seed) if args.base == "tiny" else load_smollm2()
    except LLMNotInstalled as exc:
        raise RewriteCliError(str(exc)) from None
    return model, tokenizer


def cmd_train(args: argparse.Namespace) -> int:
    from models.rewrite.gate import RewriteGate

    if not args.out:
        raise RewriteCliError("--out DIR is required: the folder the rewriters go to")
    for flag, value, least in (("--steps", args.steps, 1), ("--dpo-steps", args.dpo_steps, 0),
                               ("--batch-size", args.batch_size, 1),
                               ("--max-queries", args.max_queries, 1)):
        if value < least:
            raise RewriteCliError(f"{flag}={value} must be at least {least}")
    if not 0 < args.validation < 1:
        raise RewriteCliError(f"--validation={args.validation} must be in (0, 1)")
    if args.world is not None and args.index is not None:
        raise RewriteCliError("give --world N (a simulated log) or --index DIR, not both")
    retrieve = _retriever(args)
    if retrieve is None and args.dpo_steps:
        raise RewriteCliError("DPO needs a retriever: --world N [--seed S] for a log of "
                              "`clickloop simulate`, --index DIR (`clickloop index build`) "
                              "for any other; or --dpo-steps 0")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise RewriteCliError(f"--out {out} is a file; the rewriters go to a folder")
    try:  # the LLM's modules, before any work
        from models.rewrite import artifact, generate, sft
    except ImportError as exc:
        raise RewriteCliError(f"cannot train the LLM rewriter: {exc}") from None
    progress = not args.quiet
    with console.status("mining reformulations…"):
        steps, clicks = _read_steps(args.data)
        full = _fit_markov(steps, args.data)  # refuses a log with nothing to learn from
        fit_steps, held = _split(steps, args.validation)
        from models.rewrite.markov import MarkovRewriter
        from models.rewrite.pipeline import IDENTITY_SHARE, sft_pairs

        markov = MarkovRewriter().fit(fit_steps)
        pairs = sft_pairs(markov, identity_share=IDENTITY_SHARE)
    if pairs.is_empty():
        raise RewriteCliError(f"--data {args.data}: no reformulations mined before the "
                              f"held-out last {args.validation:.0%} of the log")
    identity = int((pairs["query"] == pairs["rewrite"]).sum())
    console.print(f"mined {pairs.height - identity:,} successful reformulations from "
                  f"{fit_steps.height:,} queries, with {identity:,} queries that succeed as "
                  f"typed; {held.height:,} held out", highlight=False)

    # The LLM: SFT on the mined pairs, then DPO on the retriever's preferences.
    model, tokenizer = _base(args)
    console.print(f"SFT of {args.base} on {pairs.height:,} pairs, {args.steps} steps",
                  highlight=False)
    model = sft.fit_sft(model, tokenizer, pairs, max_steps=args.steps,
                    batch_size=args.batch_size, seed=args.seed, progress=progress)
    info: dict[str, Any] = {"base": args.base, "sft_steps": args.steps,
                            "sft_pairs": pairs.height, "sft_identity_pairs": identity,
                            "dpo_steps": 0, "dpo_pairs": 0}
    name = f"{args.base}-sft"
    if args.dpo_steps and retrieve is not None:
        from models.rewrite.dpo import fit_dpo, preference_pairs
        from models.rewrite.pipeline import DPO_BETA, DPO_LR, DPO_NLL_WEIGHT, failing_queries

        failing = failing_queries(fit_steps, clicks, args.max_queries)
        sampler = functools.partial(generate.LLMRewriter(model, tokenizer).sample,
                                    seed=args.seed)
        with console.status(f"sampling rewrites of {failing.height:,} failing queries and "
                            "ranking them by retrieval…"):
            preferences = preference_pairs(failing, sampler, retrieve, k=K)
        if preferences.is_empty():
            console.print("[yellow]no preference pairs (every candidate retrieved as well "
                          "as every other): DPO skipped[/]")
        else:
            console.print(f"DPO on {preferences.height:,} preference pairs, "
                          f"{args.dpo_steps} steps", highlight=False)
            model = fit_dpo(model, tokenizer, preferences, max_steps=args.dpo_steps,
                            batch_size=args.batch_size, seed=args.seed, progress=progress,
                            lr=DPO_LR, beta=DPO_BETA, nll_weight=DPO_NLL_WEIGHT)
            info.update(dpo_steps=args.dpo_steps, dpo_pairs=preferences.height,
                        dpo_lr=DPO_LR, dpo_beta=DPO_BETA, dpo_nll_weight=DPO_NLL_WEIGHT)
            name = f"{args.base}-dpo"
    llm = generate.LLMRewriter(model, tokenizer, name=name)

    gate = RewriteGate()
    if retrieve is not None:
        with console.status("calibrating the gate on the held-out sessions…"):
            validation = _validation(markov, llm, held, clicks, retrieve, gate,
                                     args.max_queries)
        if validation.is_empty():
            console.print("[yellow]no held-out failing query with a click to calibrate on: "
                          f"the gate keeps threshold {gate.threshold}[/]")
        else:
            gate.fit(validation)
            info["validation_rows"] = validation.height
    else:
        console.print(f"[yellow]no retriever (--world or --index): the gate is not "
                      f"calibrated and keeps threshold {gate.threshold}[/]")

    _write_json(out / MARKOV_FILE, full.state_dict())
    _write_json(out / GATE_FILE, gate.state_dict())
    ts = steps["ts"]
    artifact.save_rewriter(model, tokenizer, out / LLM_FOLDER, {
        "name": name, **info, "data": str(args.data),
        "data_range": [float(ts.min()), float(ts.max())], "seed": args.seed})
    table = Table(title=f"rewriters → {out}")
    table.add_column("part")
    table.add_column("value", justify="right")
    for part, value in (("Markov rewrites", f"{full.rewrites_.height:,}"),
                        ("SFT pairs / steps", f"{info['sft_pairs']:,} / {info['sft_steps']}"),
                        ("DPO pairs / steps", f"{info['dpo_pairs']:,} / {info['dpo_steps']}"),
                        ("gate threshold", f"{gate.active_threshold:.3f}"),
                        ("calibrated sources", ", ".join(
                            sorted(gate.__dict__.get("calibrators_", {}))) or "none")):
        table.add_row(part, value)
    results.print(table)
    return 0


# ------------------------------------------------------------------------------ query


def load_rewrite_model(folder: Path) -> tuple[Any, Any, Any]:
    """(Markov rewriter, gate, LLM rewriter or None) from a ``train --out`` or ``mine --out``
    folder."""
    from models.rewrite.gate import RewriteGate
    from models.rewrite.markov import MarkovRewriter

    gate = RewriteGate()
    llm = None
    if not folder.is_dir():
        raise RewriteCliError(f"--model {folder}: no such folder")
    if not (folder / MARKOV_FILE).is_file():
        raise RewriteCliError(f"no model: --model {folder} has no {MARKOV_FILE} (write "
                              "one with `clickloop rewrite train` or `rewrite mine "
                              "--out`)")
    try:
        markov = MarkovRewriter().load_state_dict(
            json.loads((folder / MARKOV_FILE).read_text()))
        if (folder / GATE_FILE).is_file():
            gate.load_state_dict(json.loads((folder / GATE_FILE).read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise RewriteCliError(f"--model {folder}: cannot read its state: {exc}") from None
    if (folder / LLM_FOLDER).is_dir():
        from models.rewrite import artifact, generate

        try:
            model, tokenizer, metadata = artifact.load_rewriter(folder / LLM_FOLDER)
        except ValueError as exc:  # missing files are OSErrors: one line as well
            raise RewriteCliError(f"--model {folder}: {exc}") from None
        llm = generate.LLMRewriter(model, tokenizer,
                                   name=str(metadata.get("name", "llm")))
    return markov, gate, llm


def _load_model(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(Markov rewriter, gate, LLM rewriter or None) from ``--model DIR`` or ``--data``."""
    from models.rewrite.gate import RewriteGate

    gate = RewriteGate()
    llm = None
    if args.model is None:
        if args.data is None:
            raise RewriteCliError("no model: give --model DIR (from `clickloop rewrite train "
                                  "--out DIR` or `rewrite mine --out DIR`) or --data LOG")
        steps, _ = _read_steps(args.data)
        markov = _fit_markov(steps, args.data)
    else:
        markov, gate, llm = load_rewrite_model(Path(args.model))
    if args.threshold is not None:
        if not 0 <= args.threshold <= 1:
            raise RewriteCliError(f"--threshold={args.threshold} must be in [0, 1]")
        gate.threshold = args.threshold
        gate.__dict__.pop("threshold_", None)
    return markov, gate, llm


def cmd_query(args: argparse.Namespace) -> int:
    query = " ".join(args.words).strip()
    if not query:
        raise RewriteCliError("the query is empty")
    markov, gate, llm = _load_model(args)
    decision = gate.rewrite([query], markov, llm)[0]
    if args.json:
        print(json.dumps(decision.as_dict()))
        return 0

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    table = Table(title=f"{query!r} → {decision.output!r}")
    table.add_column("field")
    table.add_column("value")
    for name, value in (("rewritten", "yes" if decision.rewritten else "no"),
                        ("reason", decision.reason), ("output", decision.output),
                        ("source", decision.source or "-"),
                        ("confidence", num(decision.confidence)),
                        ("calibrated", num(decision.calibrated)),
                        ("threshold", num(gate.active_threshold)),
                        ("query's own success", num(decision.original_success))):
        table.add_row(name, value)
    results.print(table)
    return 0


# ------------------------------------------------------------------------------ parser


def cmd_rewrite(args: argparse.Namespace, settings: Settings) -> int:
    mode = args.words[0] if args.words and args.words[0] in MODES else "query"
    if mode != "query":
        if len(args.words) > 1:
            raise RewriteCliError(f"`rewrite {mode}` takes no words after it (got "
                                  f"{' '.join(args.words[1:])!r})")
    given = {dest for dest in _CHECKED if getattr(args, dest) is not None}
    wrong = sorted(given - _OPTIONS[mode])
    if wrong:
        flag = "--" + wrong[0].replace("json_out", "json").replace("_", "-")
        what = "`rewrite QUERY`" if mode == "query" else f"`rewrite {mode}`"
        raise RewriteCliError(f"{flag} is not an option of {what}")
    if mode == "mine":
        if args.json_out is True:
            raise RewriteCliError("`rewrite mine --json` needs the file to write: --json OUT")
        return cmd_mine(args)
    if mode == "train":
        for dest, value in _TRAIN_DEFAULTS.items():
            if getattr(args, dest) is None:
                setattr(args, dest, value)
        return cmd_train(args)
    if isinstance(args.json_out, str):
        raise RewriteCliError(f"--json takes no value after a query (got "
                              f"{args.json_out!r}): quote the query and put --json after it")
    args.json = args.json_out is True
    return cmd_query(args)


#: The options (None unless given) that belong to one mode or another.
_CHECKED = ("data", "top", "json_out", "out", "steps", "dpo_steps", "base", "world", "seed",
            "index", "batch_size", "validation", "max_queries", "model", "threshold")
_TRAIN_DEFAULTS = {"steps": 200, "dpo_steps": 50, "base": "smollm2", "seed": 0,
                   "batch_size": 8, "validation": 0.2, "max_queries": 500}


def add_rewrite_command(commands: Any) -> None:
    """The ``rewrite`` command and its modes ``mine`` and ``train``."""
    p = commands.add_parser(
        "rewrite", help="mine query rewrites, train the rewriters, rewrite a query",
        usage="clickloop rewrite mine --data LOG [--top N] [--json OUT] [--out DIR]\n"
              "       clickloop rewrite train --data LOG --out DIR [--steps N] "
              "[--dpo-steps N] [--base smollm2|tiny] (--world N [--seed S] | --index DIR)\n"
              "       clickloop rewrite QUERY [--model DIR | --data LOG] [--json]",
        description="Learn to rewrite failing queries from the same clicks (see "
        "models/rewrite). `mine` prints the best rewrites mined from a log store; `train` "
        "fits the Markov rewriter, tunes the LLM by SFT and DPO with the retriever's "
        "feedback and calibrates the gate; a QUERY prints the gate's decision for it.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("words", nargs="+", metavar="mine | train | QUERY",
                   help="the mode, or the query to rewrite (several words are joined)")
    p.add_argument("--data", metavar="LOG", help="a parquet log store folder (clickloop "
                   "consume, replay or simulate --to parquet)")
    p.add_argument("--top", type=int, help="mine: how many rewrites to print (default: 20)")
    p.add_argument("--json", dest="json_out", nargs="?", const=True, metavar="OUT",
                   help="mine: also write the rewrites to OUT as JSON; QUERY: print the "
                   "decision as one JSON line")
    p.add_argument("--out", metavar="DIR", help="mine: save the Markov state here; train: "
                   "the folder the rewriters go to")
    p.add_argument("--steps", type=int, help="train: SFT optimizer steps (default: 200)")
    p.add_argument("--dpo-steps", type=int, help="train: DPO optimizer steps; 0 skips DPO "
                   "(default: 50)")
    p.add_argument("--base", choices=("smollm2", "tiny"),
                   help="train: SmolLM2-135M-Instruct, or a tiny random Llama for tests "
                   "(default: smollm2)")
    p.add_argument("--world", type=int, metavar="N",
                   help="train: the log is `clickloop simulate`'s with --items N: judge "
                   "rewrites with its exact-word engine")
    p.add_argument("--seed", type=int, help="train: seed of --world (the one given to "
                   "simulate) and of training (default: 0)")
    p.add_argument("--index", metavar="DIR", help="train: judge rewrites by searching this "
                   "`clickloop index build` folder")
    p.add_argument("--batch-size", type=int, help="train: pairs per step (default: 8)")
    p.add_argument("--validation", type=float, help="train: share of the log's time, at its "
                   "end, held out to calibrate the gate (default: 0.2)")
    p.add_argument("--max-queries", type=int, metavar="N",
                   help="train: at most N failing queries sampled for DPO, and N held-out "
                   "queries to calibrate the gate on (default: 500)")
    p.add_argument("--model", metavar="DIR", help="QUERY: a folder of `rewrite train` or "
                   "`rewrite mine --out`")
    p.add_argument("--threshold", type=float,
                   help="QUERY: the gate's threshold on calibrated confidence (default: the "
                   "one train fitted, else 0.7)")
    p.add_argument("-q", "--quiet", action="store_true", help="train: no progress bars")
    p.set_defaults(func=cmd_rewrite)


def main(argv: Sequence[str] | None = None) -> int:
    """``clickloop rewrite`` on its own (for scripts and tests)."""
    from ingest.settings import SettingsError
    from serving.settings import load

    parser = argparse.ArgumentParser(prog="clickloop")
    add_rewrite_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["rewrite", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(cmd_rewrite(args, load(None)) or 0)
    except (RewriteCliError, SettingsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
