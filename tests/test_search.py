"""Similarity search: exact search is brute force, approximate indexes keep their recall,
filters equal brute force with the same filter, indexes refuse other models and stores, and
the embed -> index -> search commands find blobs of the same size."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import cli

from deepfield.data.store import create_store, open_store
from deepfield.errors import DeepfieldError, InputError
from deepfield.tasks.search import build_index, embed_store, open_index


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """Tiny indexes need no threads, and OpenMP threads spin badly on a shared 2-core machine."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def mixture(n: int, dim: int, seed: int, clusters: int = 20) -> np.ndarray:
    """Codes from a fixed Gaussian mixture (the same clusters for every seed)."""
    centres = np.random.default_rng(123).normal(0, 2.0, (clusters, dim))
    rng = np.random.default_rng(seed)
    return (centres[rng.integers(0, clusters, n)] + rng.normal(0, 1.0, (n, dim))).astype(np.float32)


def brute_distances(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    x, q = x.astype(np.float64), q.astype(np.float64)
    if metric == "l2":
        return np.sqrt(((q[:, None, :] - x[None]) ** 2).sum(-1))
    cos = (q @ x.T) / np.linalg.norm(q, axis=1)[:, None] / np.linalg.norm(x, axis=1)[None]
    return 1 - cos


def neighbours(table, n_queries: int, k: int) -> np.ndarray:
    return np.asarray(table.column("neighbour_id").to_pylist()).reshape(n_queries, k)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_exact_index_is_brute_force(metric, tmp_path):
    x = mixture(2000, 8, seed=0)
    q = mixture(30, 8, seed=1)
    index = build_index(x, tmp_path / "index", metric=metric, progress=False)
    assert index.kind == "flat" and len(index) == 2000 and index.dim == 8
    table = index.search_codes(q, k=10)
    d = brute_distances(x, q, metric)
    order = np.argsort(d, axis=1)[:, :10]
    np.testing.assert_array_equal(neighbours(table, 30, 10), order)
    np.testing.assert_allclose(np.asarray(table.column("distance")).reshape(30, 10),
                               np.take_along_axis(d, order, axis=1), rtol=1e-4, atol=2e-4)
    assert table.column("rank").to_pylist()[:10] == list(range(1, 11))
    # by id: an indexed object is its own nearest neighbour, at distance 0, unless excluded
    by_id = index.search([17, 4], k=3)
    assert by_id.column("neighbour_id").to_pylist()[::3] == [17, 4]
    assert max(by_id.column("distance").to_pylist()[::3]) < 1e-3
    own = index.search([17], k=3, exclude_self=True).column("neighbour_id").to_pylist()
    assert own == np.argsort(brute_distances(x, x[[17]], metric)[0])[1:4].tolist()


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_approximate_indexes_reach_their_recall(kind):
    x, q = mixture(4000, 16, seed=2), mixture(200, 16, seed=3)
    index = build_index(x, metric="l2", kind=kind, target_recall=0.95, progress=False)
    assert index.kind == kind and index.meta["recall_at_10"] >= 0.95
    exact = np.argsort(brute_distances(x, q, "l2"), axis=1)[:, :10]
    found = neighbours(index.search_codes(q, k=10), 200, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall >= 0.92, f"{kind}: recall@10 {recall:.3f} on held-out queries"
    if kind != "hnsw":
        # 4 sqrt(N) cells, capped by ~39 training codes per cell (500 codes are held out for tuning)
        assert index.meta["params"]["nlist"] == (4000 - 500) // 39


def test_ivfpq_without_reranking_keeps_only_pq_codes():
    import faiss

    x, q = mixture(4000, 16, seed=2), mixture(200, 16, seed=3)
    sizes, recalls = {}, {}
    for label, kind, params in (("ivf", "ivf", {}), ("pq", "ivfpq", {"k_factor": 0})):
        if label == "pq":  # the quantisation caps the recall below the target, and says so
            with pytest.warns(UserWarning, match=r"ivfpq index: recall@10 0\.\d+ on held-out codes, below the target"):
                index = build_index(x, metric="l2", kind=kind, params=params, progress=False)
        else:
            index = build_index(x, metric="l2", kind=kind, params=params, progress=False)
        sizes[label] = faiss.serialize_index(index.index).nbytes
        exact = np.argsort(brute_distances(x, q, "l2"), axis=1)[:, :10]
        found = neighbours(index.search_codes(q, k=10), 200, 10)
        recalls[label] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
        # the recall recorded at build time (held-out codes) is what new queries get
        assert abs(index.meta["recall_at_10"] - recalls[label]) < 0.05
    # 8 one-byte codes (+ an 8-byte id) per object instead of 16 floats, at some cost in recall
    assert sizes["pq"] < 0.5 * sizes["ivf"] and 0.6 < recalls["pq"] < recalls["ivf"]


def catalog_for(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"magnitude": rng.uniform(18, 25, n), "redshift": rng.uniform(0, 2, n)}


def test_filters_equal_brute_force_with_the_same_filter(tmp_path):
    x = mixture(3000, 8, seed=4)
    cat = catalog_for(3000, 5)
    index = build_index(x, metric="cosine", ids=np.arange(3000) + 1000, catalog=cat, progress=False)
    queries = np.arange(60) * 7
    d = brute_distances(x, x[queries], "cosine")
    for window, where in (({"magnitude": 0.5}, None), ({"magnitude": 0.5}, "redshift < 0.4"),
                          ({"magnitude": 0.004}, None)):
        table = index.search(queries + 1000, k=10, filters=window, where=where, exclude_self=True,
                             columns=["magnitude"])
        for i, qpos in enumerate(queries):
            ok = np.abs(cat["magnitude"] - cat["magnitude"][qpos]) <= window["magnitude"]
            if where:
                ok &= cat["redshift"] < 0.4
            ok[qpos] = False
            expect = [p + 1000 for p in np.argsort(d[i]) if ok[p]][:10]
            got = [r["neighbour_id"] for r in table.to_pylist() if r["query_id"] == qpos + 1000]
            assert got == expect, (window, where, qpos)
    # the narrow window leaves some queries with fewer than k neighbours: all of them were found
    assert 0 < table.num_rows < 600
    # an approximate index keeps only neighbours that pass, and most of the exact ones
    hnsw = build_index(x, metric="cosine", kind="hnsw", catalog=cat, progress=False)
    table = hnsw.search(queries, k=10, filters={"magnitude": 0.5}, columns=["magnitude"])
    mags = np.asarray(table.column("magnitude")).reshape(60, 10)
    assert np.all(np.abs(mags - cat["magnitude"][queries][:, None]) <= 0.5)
    exact = build_index(x, metric="cosine", catalog=cat, progress=False)
    exact = exact.search(queries, k=10, filters={"magnitude": 0.5})
    assert np.mean(neighbours(table, 60, 10) == neighbours(exact, 60, 10)) > 0.9


def test_index_folder_round_trip(tmp_path):
    x, q = mixture(3000, 12, seed=6), mixture(20, 12, seed=7)
    built = build_index(x, tmp_path / "index", metric="l2", kind="hnsw", catalog=catalog_for(3000, 8),
                        progress=False)
    reopened = open_index(tmp_path / "index")
    assert reopened.meta == built.meta and reopened.kind == "hnsw" and reopened.metric == "l2"
    assert {p.name for p in tmp_path.iterdir()} == {"index"}  # no temporary folders left behind
    assert {p.name for p in (tmp_path / "index").iterdir()} == {"index.faiss", "ids.npy", "catalog.parquet",
                                                                 "meta.json"}
    a, b = built.search_codes(q, k=10, columns=["redshift"]), reopened.search_codes(q, k=10, columns=["redshift"])
    assert a.equals(b)
    np.testing.assert_allclose(reopened.vectors([5, 9]), x[[5, 9]])
    with pytest.raises(InputError, match="already exists"):
        build_index(x, tmp_path / "index", progress=False)
    with pytest.raises(DeepfieldError, match="no index at"):
        open_index(tmp_path / "missing")


@pytest.fixture(scope="module")
def pca_models(blob_store, tmp_path_factory):
    """Two PCA models of the blobs that differ (trained on different splits)."""
    from deepfield.train import TrainSettings, train

    root = tmp_path_factory.mktemp("search-models")
    a = train("pca", blob_store, root / "pca_a", model_options={"latent_dim": 6},
              settings=TrainSettings(progress=False))
    b = train("pca", blob_store, root / "pca_b", model_options={"latent_dim": 6},
              settings=TrainSettings(progress=False, split_seed=1))
    return a, b


def test_index_refuses_another_model_or_store(blob_store, pca_models, tmp_path):
    from conftest import write_blob_store

    a, b = pca_models
    codes_a = embed_store(a, blob_store, tmp_path / "codes_a", progress=False)
    codes_b = embed_store(b, blob_store, tmp_path / "codes_b", progress=False)
    prov = codes_a.meta["provenance"]
    assert prov["model"]["path"] == str(a.resolve()) and prov["source_fingerprint"] == blob_store.fingerprint
    build_index(codes_a, tmp_path / "index", progress=False)
    fp_a, fp_b = prov["model"]["fingerprint"][:12], codes_b.meta["provenance"]["model"]["fingerprint"][:12]
    assert fp_a != fp_b
    with pytest.raises(InputError) as err:
        open_index(tmp_path / "index", model=b)
    assert fp_a in str(err.value) and fp_b in str(err.value) and str(a.resolve()) in str(err.value)
    with pytest.raises(InputError, match=f"built for model PCA {fp_a}.*embedded with PCA {fp_b}"):
        open_index(tmp_path / "index").search(codes_b, k=3)
    other = open_store(write_blob_store(tmp_path / "other_blobs", n=50, seed=1))
    with pytest.raises(InputError) as err:
        open_index(tmp_path / "index", store=other)
    assert str(other.path) in str(err.value) and str(blob_store.path) in str(err.value)
    index = open_index(tmp_path / "index", model=a, store=blob_store)  # the right ones are accepted
    # an image is encoded with the index's model: a blob finds itself first
    table = index.search(blob_store.read("x", [3, 8]), k=2)
    assert table.column("neighbour_id").to_pylist()[::2] == [blob_store.ids[3], blob_store.ids[8]]
    # another store's images are encoded too (queries from the other store, ids are its ids)
    assert index.search(other, k=1).num_rows == 50
    # an index of part of a store: the rest of the store is encoded and searched like new objects
    part = build_index(embed_store(a, blob_store, tmp_path / "codes_part", indices=np.arange(100), progress=False),
                       progress=False)
    rows = part.search(blob_store, k=2, exclude_self=True).to_pylist()
    assert len(rows) == 480 and not any(r["query_id"] == r["neighbour_id"] for r in rows)
    assert {r["neighbour_id"] for r in rows} <= set(blob_store.ids[:100].tolist())


def test_polar_codes_index_and_image_queries(blob_store, pca_models, tmp_path):
    """--form polar: each code's direction and log length, written at embedding and applied again
    to image queries; a blob twice as bright has the same direction and a length log(2) longer."""
    from deepfield.tasks.search import code_form

    a, _ = pca_models
    plain = embed_store(a, blob_store, tmp_path / "plain", progress=False).read("x")
    polar = embed_store(a, blob_store, tmp_path / "polar", form="polar", progress=False)
    z = polar.read("x")
    assert z.shape == (len(blob_store), plain.shape[1] + 1)
    np.testing.assert_allclose(np.linalg.norm(z[:, :-1], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(z[:, -1], np.log(np.linalg.norm(plain, axis=1)), rtol=1e-5, atol=1e-5)
    doubled = code_form(2 * torch.from_numpy(plain), "polar").numpy()
    np.testing.assert_allclose(doubled[:, -1] - z[:, -1], np.log(2), atol=1e-5)
    index = build_index(polar, tmp_path / "index", progress=False)
    assert index.form == "polar"
    table = index.search(blob_store.read("x", [3, 8]), k=1)  # images are put in polar form too
    assert table.column("neighbour_id").to_pylist() == [blob_store.ids[3], blob_store.ids[8]]
    assert table.column("distance").to_numpy().max() < 1e-4
    plain_codes = embed_store(a, blob_store, tmp_path / "plain2", indices=np.arange(5), progress=False)
    with pytest.raises(InputError, match="embed the queries"):
        index.search(plain_codes, k=1)
    with pytest.raises(InputError, match="form 'log'"):
        embed_store(a, blob_store, tmp_path / "bad", form="log", progress=False)


def test_bad_queries_and_codes_fail_clearly(blob_store, pca_models, tmp_path):
    a, _ = pca_models
    index = build_index(embed_store(a, blob_store, tmp_path / "codes", progress=False), tmp_path / "index",
                        progress=False)
    with pytest.raises(InputError, match=r"shape \(1, 12, 12\).*\(1, 16, 16\) \(band r\)"):
        index.search(np.zeros((1, 12, 12), np.float32), k=3)
    with pytest.raises(InputError, match=r"shape \(3, 16, 16\).*\(1, 16, 16\) \(band r\)"):
        index.search(np.zeros((3, 16, 16), np.float32), k=3)
    bad = blob_store.read("x", [0, 1, 2])
    bad[1, 0, 4, 4] = np.nan
    with pytest.raises(InputError, match=r"NaN/inf pixels in image\(s\) \[1\]"):
        index.search(bad, k=3)
    with pytest.raises(InputError, match=r"ids \[123456\] are not in"):
        index.search([123456], k=3)
    with pytest.raises(InputError, match="needs each query's magnitude"):
        index.search(blob_store.read("x", [0]), k=3, filters={"magnitude": 0.5})
    with pytest.raises(InputError, match="length 6"):
        index.search_codes(np.zeros(5), k=3)
    codes = mixture(100, 4, seed=9)
    codes[[7, 42]] = np.nan
    with pytest.raises(InputError, match=r"NaN/inf codes for 2 object\(s\), ids \[17, 52\]"):
        build_index(codes, ids=np.arange(100) + 10, progress=False)
    # a NaN pixel in a store gives NaN codes, reported by the object's id
    x = blob_store.read("x", slice(0, 20))
    x[5, 0, 0, 0] = np.nan
    with create_store(tmp_path / "nan", (1, 16, 16), bands=("r",), pixel_scale=0.2, allow_nonfinite=True) as w:
        w.append(x=x, catalog={"id": np.arange(20) + 500})
    with pytest.raises(InputError, match=r"NaN/inf codes for objects with ids \[505\]"):
        embed_store(a, tmp_path / "nan", tmp_path / "nan_codes", progress=False)


def test_embed_index_search_through_the_cli(capsys, blob_store, pca_models, tmp_path):
    a, b = pca_models
    code, out = cli(capsys, "embed", a, "--store", blob_store.path, "--out", tmp_path / "codes", "--no-progress")
    assert code == 0 and "240 codes of length 6" in out
    code, out = cli(capsys, "index", tmp_path / "codes", "--out", tmp_path / "index", "--no-progress")
    assert code == 0 and "flat index (cosine) of 240 codes" in out
    code, out = cli(capsys, "search", tmp_path / "index", "--id", 7, "--k", 4, "--columns", "half_light_radius")
    assert code == 0 and "neighbours of id 7" in out and "half_light_radius" in out
    code, out = cli(capsys, "search", tmp_path / "index", "--catalog", blob_store.path, "--k", 5, "--exclude-self",
                    "--columns", "half_light_radius", "--out", tmp_path / "knn.parquet", "--no-progress")
    assert code == 0 and "1200 neighbours of 240 queries" in out
    table = pq.read_table(tmp_path / "knn.parquet")
    assert table.column_names == ["query_id", "rank", "neighbour_id", "distance", "half_light_radius"]
    radius = dict(zip(blob_store.ids.tolist(), blob_store.column("half_light_radius")))
    q = np.log([radius[i] for i in table.column("query_id").to_pylist()])
    nb = np.log(table.column("half_light_radius").to_numpy())
    shuffled = np.random.default_rng(0).permutation(nb)
    # blobs radii span a factor 2.7: neighbours in PCA code space are within ~10%, random pairs ~35%
    assert np.median(np.abs(q - nb)) < 0.3 * np.median(np.abs(q - shuffled))
    # the magnitude window holds for every neighbour
    code, out = cli(capsys, "search", tmp_path / "index", "--catalog", blob_store.path, "--k", 3,
                    "--where-window", "magnitude=0.3", "--out", tmp_path / "win.parquet", "--no-progress")
    assert code == 0
    win = pq.read_table(tmp_path / "win.parquet")
    mag = dict(zip(blob_store.ids.tolist(), blob_store.column("magnitude")))
    assert all(abs(mag[r["query_id"]] - r["magnitude"]) <= 0.3 for r in win.to_pylist())
    # an image file finds its own blob; a wrong-size image and another model are refused by exit code 2
    np.save(tmp_path / "blob.npy", blob_store.read("x", [11])[0])
    code, out = cli(capsys, "search", tmp_path / "index", "--image", tmp_path / "blob.npy", "--k", 2,
                    "--out", tmp_path / "image.parquet")
    assert code == 0 and "neighbours of image 0" in out
    assert pq.read_table(tmp_path / "image.parquet").column("neighbour_id")[0].as_py() == blob_store.ids[11]
    np.save(tmp_path / "small.npy", np.zeros((1, 8, 8), np.float32))
    code, out = cli(capsys, "search", tmp_path / "index", "--image", tmp_path / "small.npy")
    assert code == 2 and "(1, 8, 8)" in out and "(1, 16, 16)" in out
    code, out = cli(capsys, "search", tmp_path / "index", "--id", 3, "--model", b)
    assert code == 2 and "was built for model PCA" in out
    code, out = cli(capsys, "search", tmp_path / "index", "--id", 3, "--image", tmp_path / "blob.npy")
    assert code == 2 and "exactly one of" in out
