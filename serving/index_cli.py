"""``clickloop index build`` and ``clickloop index search``: the retrieval index from the
command line.

``build`` embeds a catalog's titles with the text encoder (cached on disk by text hash, so a
second build re-encodes only new titles), builds the self-tuning FAISS index and saves it with
the catalog beside it. ``search`` loads it and runs queries through the retrieval pipeline,
optionally scored by a trained ranker artifact.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ingest.settings import Settings

CATALOG_FILE = "items.parquet"
console = Console(stderr=True)
results = Console()


class IndexCliError(Exception):
    """A problem the user can fix; ``serving.cli`` prints it as one ``error:`` line."""


def _device(args: argparse.Namespace) -> str:
    """``--device`` resolved: ``cpu`` or ``gpu``."""
    from ranking.index import IndexInputError
    from ranking.index.device import resolve_device

    try:
        return resolve_device(args.device)
    except IndexInputError as exc:
        raise IndexCliError(f"--device {args.device}: {exc}") from None


def _encoder(args: argparse.Namespace, device: str, cache_dir: str | None) -> Any:
    from models.embeddings import TextEncoder

    if args.batch_size < 1:
        raise IndexCliError(f"--batch-size={args.batch_size} must be at least 1")
    return TextEncoder(cache_dir=cache_dir, device="cuda" if device == "gpu" else "cpu",
                       batch_size=args.batch_size)


def _catalog(args: argparse.Namespace) -> Any:
    if args.world is not None:
        from simulation.catalog import catalog
        from simulation.world import World

        if args.world < 1:
            raise IndexCliError(f"--world={args.world} must be at least 1 item")
        return catalog(World(n_items=args.world, n_users=1, seed=args.seed))
    from serving.catalog import load_catalog

    return load_catalog(args.items, require_title=True)


def cmd_index_build(args: argparse.Namespace, settings: Settings) -> int:
    from ranking.index import IndexInputError, build

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise IndexCliError(f"--out {out} is a file; the index is a folder")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise IndexCliError(f"--out {out} is not empty; pass --overwrite to replace the "
                            "index there")
    for flag, value in (("--recall-k", args.recall_k), ("--search-param", args.search_param)):
        if value is not None and value < 1:
            raise IndexCliError(f"{flag}={value} must be at least 1")
    device = _device(args)
    items = _catalog(args)
    encoder = _encoder(args, device, args.cache_dir)
    titles = items["title"].to_list()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, disable=args.quiet) as progress:
        task = progress.add_task(f"embedding titles ({encoder.name})", total=len(titles))
        vectors = encoder.encode(titles, progress=lambda done: progress.advance(task, done))
        progress.add_task("building and tuning the index", total=None)
        try:
            index = build(items["item_id"].to_list(), vectors, model=encoder.name,
                          recall_target=args.recall_target, k=args.recall_k,
                          structure=args.structure, search_param=args.search_param,
                          memory_budget_mb=args.memory_budget_mb, seed=args.seed,
                          device=device)
        except IndexInputError as exc:
            raise IndexCliError(str(exc)) from None
    index.save(out)
    items.select("item_id", "title").write_parquet(out / CATALOG_FILE)
    point = index.operating_point
    table = Table(title=f"index of {len(index):,} items → {out}")
    table.add_column("chosen")
    table.add_column(f"recall@{point.get('k')}", justify="right")
    table.add_column("target", justify="right")
    table.add_column("queries/s (tuning)", justify="right")
    table.add_column("device")
    table.add_row(point.get("choice", point["structure"]), f"{point['recall']:.3f}",
                  f"{point['recall_target']:.2f}", f"{point['qps']:,.0f}", index.device)
    results.print(table)
    for candidate in point.get("candidates", []):
        results.print(f"  tried {candidate.get('choice', candidate['structure'])}: recall "
                      f"{candidate['recall']:.3f}, {candidate['qps']:,.0f} queries/s",
                      highlight=False)
    return 0


def cmd_index_search(args: argparse.Namespace, settings: Settings) -> int:
    import polars as pl

    from ranking.index import IndexLoadError, VectorIndex
    from ranking.pipeline import Pipeline, PipelineInputError, Request
    from serving.catalog import load_catalog

    folder = Path(args.index)
    if args.k < 1:
        raise IndexCliError(f"-k={args.k} must be at least 1")
    if args.retrieve < args.k:
        raise IndexCliError(f"--retrieve={args.retrieve} must be at least -k={args.k}: the "
                            "top k are chosen among the retrieved")
    device = _device(args)
    try:
        index = VectorIndex.load(folder, device=device)
    except (IndexLoadError, FileNotFoundError) as exc:
        raise IndexCliError(f"{folder}: {exc}") from None
    # Queries are not cached: each differs, and the cache would only grow.
    encoder = _encoder(args, device, cache_dir=None)
    if index.model != encoder.name:
        raise IndexCliError(f"{folder} was built with model {index.model!r}; queries are "
                            f"encoded with {encoder.name!r}, whose vectors it cannot search")
    if args.items:
        items = load_catalog(args.items)
    elif (folder / CATALOG_FILE).is_file():
        items = pl.read_parquet(folder / CATALOG_FILE)
    else:
        raise IndexCliError(f"{folder} has no {CATALOG_FILE}: give the catalog with --items")
    scorer = _scorer(args, items) if args.ranker else None
    titles = dict(zip(items["item_id"].to_list(), items["title"].to_list(), strict=True))
    exclude = frozenset(e for e in (args.exclude or "").split(",") if e)
    try:
        pipeline = Pipeline(index, query_encoder=encoder, scorer=scorer, retrieve=args.retrieve)
        requests = [Request(query=q, exclude=exclude) for q in args.query]
        ranked = pipeline.run(requests, k=args.k)
    except PipelineInputError as exc:
        raise IndexCliError(str(exc)) from None
    if args.json:
        for query, rows in zip(args.query, ranked, strict=True):
            print(json.dumps({"query": query, "items": [
                {"item_id": r.item_id, "title": titles.get(r.item_id), "score": r.score,
                 "stage": r.stage, "retrieval_score": r.retrieval_score} for r in rows]}))
        return 0
    for query, rows in zip(args.query, ranked, strict=True):
        table = Table(title=f"{query!r}: top {len(rows)} of {len(index):,} "
                            f"({index.operating_point.get('choice', index.structure)})")
        for name, justify in (("#", "right"), ("item_id", "left"), ("title", "left"),
                              ("score", "right"), ("stage", "left")):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for r in rows:
            table.add_row(str(r.position), r.item_id, titles.get(r.item_id, ""),
                          f"{r.score:.3f}", r.stage)
        results.print(table)
    return 0


def _scorer(args: argparse.Namespace, items: Any) -> Any:
    """The ``--ranker`` artifact as the score step. It is read from the folder that holds it:
    the command line names the artifact itself, so there is no other directory to confine
    the load to (the server confines it to its configured artifact directory)."""
    from models.artifacts import ArtifactError, load
    from models.recommenders import FactorizationModel
    from models.scorers import ListRankerScorer

    path = Path(args.ranker)
    try:
        artifact = load(path, path.resolve().parent)
        if isinstance(artifact.model, FactorizationModel):
            raise IndexCliError(f"--ranker {path} is a {artifact.metadata['kind']} "
                                "recommender, which scores users' items; index search has "
                                "queries and no user, so give a search ranker (ips-listwise, "
                                "ips-pairwise, dla)")
        return ListRankerScorer(artifact, items)
    except (ArtifactError, ValueError, KeyError, TypeError) as exc:
        raise IndexCliError(f"--ranker {path}: {exc}") from None


def add_index_commands(commands: Any) -> None:
    """The ``index`` command and its ``build`` and ``search`` subcommands."""
    p = commands.add_parser("index", help="build or search the retrieval index",
                            description="The FAISS retrieval index over a catalog's title "
                            "embeddings (all-MiniLM-L6-v2).")
    sub = p.add_subparsers(dest="index_command", required=True, metavar="SUBCOMMAND")

    b = sub.add_parser("build", help="embed a catalog and build a self-tuning index",
                       description="Embed every title (batched, cached on disk by text hash), "
                       "build the index, choosing its structure (exact Flat for small "
                       "catalogs; IVF, HNSW or IVF-PQ) and search parameter by measuring "
                       "recall against exact search on a held-out sample, and save it with "
                       "the catalog. Prints the operating point it chose.")
    source = b.add_mutually_exclusive_group(required=True)
    source.add_argument("--items", metavar="FILE",
                        help="catalog CSV or parquet with item_id and title columns; rows "
                        "without an id or a title, or repeating an id, are rejected and "
                        "reported")
    source.add_argument("--world", type=int, metavar="N",
                        help="the catalog of a simulated world of N items instead")
    b.add_argument("--out", required=True, metavar="DIR",
                   help="folder for index.faiss, ids.json, metadata.json and items.parquet")
    b.add_argument("--overwrite", action="store_true",
                   help="replace an index already in --out (default: refuse)")
    b.add_argument("--recall-target", type=float, default=0.95,
                   help="recall@--recall-k against exact search the index must meet on its "
                   "held-out sample (default: 0.95)")
    b.add_argument("--recall-k", type=int, default=100,
                   help="the k of that recall (default: 100)")
    b.add_argument("--structure",
                   help="force a FAISS factory string (e.g. Flat, IVF1024,Flat, HNSW32, "
                   "IVF1024,PQ16) instead of the automatic choice")
    b.add_argument("--search-param", type=int,
                   help="force nprobe (IVF) or efSearch (HNSW) instead of tuning it")
    b.add_argument("--memory-budget-mb", type=float,
                   help="the most memory the index may take; structures over it are not "
                   "considered, and IVF-PQ compresses the vectors to fit (default: no limit)")
    b.add_argument("--cache-dir", default=".clickloop/embeddings",
                   help="on-disk cache of title embeddings, by text hash, so a rebuild "
                   "encodes only new titles (default: .clickloop/embeddings)")
    b.add_argument("--seed", type=int, default=0,
                   help="seed of the tuning sample and of --world (default: 0)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _shared(b)
    b.set_defaults(func=cmd_index_build)

    s = sub.add_parser("search", help="search an index with query text",
                       description="Encode each query, retrieve its nearest items, score "
                       "them with --ranker when given, and print the top -k with the score "
                       "and the stage (retrieve, score, rerank) that placed each.")
    s.add_argument("index", metavar="DIR", help="an index folder written by `index build`")
    s.add_argument("query", nargs="+", help="one or more query texts (quote each)")
    s.add_argument("-k", type=int, default=10, help="results per query (default: 10)")
    s.add_argument("--retrieve", type=int, default=100,
                   help="candidates retrieved per query before scoring (default: 100)")
    s.add_argument("--exclude", metavar="IDS",
                   help="comma-separated item ids never to return (seen or blocked items)")
    s.add_argument("--ranker", metavar="ARTIFACT",
                   help="a trained artifact folder (clickloop train --out) to score the "
                   "candidates with; without it the similarity ranks them")
    s.add_argument("--items", metavar="FILE",
                   help="the catalog the ranker's features come from (default: the index "
                   "folder's items.parquet)")
    s.add_argument("--json", action="store_true",
                   help="print one JSON line per query instead of tables")
    _shared(s)
    s.set_defaults(func=cmd_index_search)


def _shared(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "auto", "gpu"), default="cpu",
                   help="where FAISS searches and the encoder runs: auto takes the GPU when "
                   "faiss-gpu sees one (default: cpu)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="texts encoded per batch (default: 64)")


