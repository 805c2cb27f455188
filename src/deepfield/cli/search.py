"""`deepfield embed`, `index` and `search`: codes of a store, a FAISS index over them, nearest neighbours."""

from __future__ import annotations

from pathlib import Path

import typer

from deepfield._names import comma_list
from deepfield.cli._app import app, console


def _pairs(values: list[str] | None, option: str) -> dict[str, float]:
    """'magnitude=0.5' options (repeatable, or comma-separated) as {column: number}."""
    from deepfield.errors import InputError

    out: dict[str, float] = {}
    for item in ",".join(values or []).split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise InputError(f"{option} {item!r}: expected COLUMN=NUMBER, e.g. {option} magnitude=0.5")
    return out


@app.command()
def embed(
    model_dir: Path = typer.Argument(..., help="Model folder (any encoder: pca, ae, conv-ae, vae, cvae)."),
    store: Path = typer.Option(..., "--store", "-s", help="Store to embed."),
    out: Path = typer.Option(..., "--out", "-o", help="Codes store to write (ids, catalog, model identity)."),
    where: str = typer.Option(None, "--where", help="Catalog query, e.g. 'magnitude < 23'."),
    split: str = typer.Option(None, "--split", help="Only the model's train, val or test objects."),
    form: str = typer.Option("codes", "--form", help="codes (as the model gives them) or polar: each code's "
                                                     "direction and log length, shape apart from brightness "
                                                     "for flux-linear codes (pca, conv-ae)."),
    batch_size: int = typer.Option(256, "--batch-size"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Embed a store into codes keyed by id, recording the model and store for `deepfield index`."""
    from deepfield.data.store import open_store
    from deepfield.models.folder import read_model_config
    from deepfield.tasks import resolve_indices
    from deepfield.tasks.search import embed_store

    s = open_store(store)
    idx = resolve_indices(s, where, split, read_model_config(model_dir))
    # the folder, not a loaded model, so the codes record where the model lives
    codes = embed_store(model_dir, s, out, indices=idx, form=form, batch_size=batch_size, overwrite=overwrite,
                        progress=progress)
    console.print(f"[green]{len(codes)} codes of length {codes.sample_shape[0]} written to[/] {out}")


@app.command("index")
def index_cmd(
    codes: Path = typer.Argument(..., help="Codes store from `deepfield embed`."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to write."),
    metric: str = typer.Option("cosine", "--metric", help="cosine (1 - cos angle) or l2 (Euclidean)."),
    kind: str = typer.Option("auto", "--kind", help="auto (flat below 100k codes, else ivf), flat, hnsw, ivf, ivfpq."),
    target_recall: float = typer.Option(0.95, "--target-recall", help="recall@10 the tuned search effort must reach."),
    param: list[str] = typer.Option(None, "--param", help="Index parameter, e.g. M=48, nlist=4096, nprobe=16."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Build a FAISS index over a codes store (exact below 100k objects, IVF above; or HNSW, IVF-PQ)."""
    from deepfield.tasks.search import build_index

    import warnings

    params = {k: (int(v) if float(v).is_integer() else v) for k, v in _pairs(param, "--param").items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = build_index(codes, out, metric=metric, kind=kind, params=params, target_recall=target_recall,
                            seed=seed, overwrite=overwrite, progress=progress)
    for w in caught:
        console.print(f"[yellow]warning:[/] {w.message}")
    m = index.meta
    settings = ", ".join(f"{k}={v}" for k, v in m["params"].items())
    console.print(f"[green]{m['kind']} index ({m['metric']}) of {m['count']} codes of length {m['dim']} written to[/] "
                  f"{out} in {m['build_seconds']:.1f} s" + (f"; {settings}, recall@10 {m['recall_at_10']:.3f} on a "
                                                           "sample" if settings else ""))


@app.command()
def search(
    index: Path = typer.Argument(..., help="Index folder from `deepfield index`."),
    id: list[int] = typer.Option(None, "--id", help="Query by object id (repeatable)."),
    image: Path = typer.Option(None, "--image", help="Query by an image: .npy or FITS, (C, H, W) or (N, C, H, W)."),
    catalog: Path = typer.Option(None, "--catalog", help="Query with every object of a store (images or codes)."),
    k: int = typer.Option(10, "--k", help="Neighbours per query."),
    where_window: list[str] = typer.Option(None, "--where-window",
                                           help="Keep neighbours within +-W of the query's value: COLUMN=W, "
                                                "e.g. magnitude=0.5 (repeatable)."),
    where: str = typer.Option(None, "--where", help="Catalog query every neighbour passes, e.g. 'redshift < 1'."),
    query_value: list[str] = typer.Option(None, "--query-value",
                                          help="The query's COLUMN=VALUE for --where-window with --image."),
    columns: str = typer.Option(None, "--columns", help="Neighbour catalog columns to add, e.g. magnitude,redshift."),
    exclude_self: bool = typer.Option(False, "--exclude-self", help="Leave an indexed query out of its neighbours."),
    model: Path = typer.Option(None, "--model", help="The index's model folder, if it has moved."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the top-k table as Parquet."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Nearest neighbours by id, image or a whole store; a table per query, or Parquet with --out."""
    from deepfield._atomic import write_parquet_atomic
    from deepfield.errors import InputError
    from deepfield.tasks.search import open_index

    given = [name for name, v in (("--id", id), ("--image", image), ("--catalog", catalog)) if v]
    if len(given) != 1:
        got = f" (got {', '.join(given)})" if given else ""
        raise InputError(f"give exactly one of --id, --image or --catalog{got}")
    if catalog and out is None:
        raise InputError("--catalog searches write a table: pass --out TABLE.parquet")
    if out is not None and out.exists() and not overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it")
    windows = _pairs(where_window, "--where-window")
    extra = list(comma_list(columns))
    extra += [c for c in windows if c not in extra]
    idx = open_index(index, model=model)
    queries = list(id) if id else image if image else catalog
    table = idx.search(queries, k=k, filters=windows, where=where, query_values=_pairs(query_value, "--query-value"),
                       columns=extra, exclude_self=exclude_self, progress=progress)
    if out is not None:
        write_parquet_atomic(out, table)
    n_queries = len(set(table.column("query_id").to_pylist()))
    if catalog is None and n_queries <= 20:
        _print_tables(table, idx.metric, "id" if id else "image")
    if out is not None:
        console.print(f"[green]{table.num_rows} neighbours of {n_queries} queries written to[/] {out}")


def _print_tables(table, metric: str, what: str) -> None:
    from rich.table import Table

    rows = table.to_pylist()
    names = [c for c in table.column_names if c not in ("query_id", "rank", "neighbour_id", "distance")]
    for qid in dict.fromkeys(r["query_id"] for r in rows):
        t = Table(title=f"neighbours of {what} {qid} ({metric} distance)")
        for col in ("rank", "id", "distance", *names):
            t.add_column(col, justify="right")
        for r in (r for r in rows if r["query_id"] == qid):
            t.add_row(str(r["rank"]), str(r["neighbour_id"]), f"{r['distance']:.4g}",
                      *[f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in names])
        console.print(t)
