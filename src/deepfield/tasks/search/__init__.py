"""Similarity search over latent codes: embed a store, build a FAISS index, query it.

    codes = embed_store("models/ae", "stores/galaxies", "codes/ae")   # (N, D) codes keyed by id
    build_index(codes, "indexes/ae", metric="cosine")                 # exact below 100k objects
    index = open_index("indexes/ae")
    table = index.search([1234], k=10, filters={"magnitude": 0.5})    # neighbours within +-0.5 mag

An index folder::

    INDEX/
      index.faiss      the FAISS index over positions 0..N-1
      ids.npy          (N,) int64: the object id at each position
      catalog.parquet  the indexed objects' catalog (id + physical columns): filters and tables
      meta.json        format version, metric, kind, dim, count, search parameters, the recall@10
                       measured at build time, and what the index was built from: the model
                       (class, weight fingerprint, folder), the codes store and its source store
                       (path, fingerprint)

Distances: 'l2' is the Euclidean distance between codes (code units); 'cosine' is
1 - cos(angle) between codes (0: same direction, 2: opposite). Cosine codes are normalised to
unit length and searched with L2, since |a - b|^2 = 2 (1 - cos) for unit vectors.

Kinds: 'flat' is exact; 'hnsw' a navigable small-world graph (Malkov & Yashunin 2018,
arXiv:1603.09320); 'ivf' an inverted file of k-means cells over the raw codes; 'ivfpq' the
same cells with product-quantised codes (Jegou et al. 2011, doi:10.1109/TPAMI.2010.57), D/2
bytes per code, whose candidates are re-ranked with the raw codes (k_factor > 0, the default:
recall as IVF's, memory not saved) or not (k_factor=0: 8x smaller than the raw codes, recall
capped by the quantisation). 'auto' takes flat below 100,000 objects and IVF above: on 1M
32-D codes (benchmarks/search.py) it built 6x faster than HNSW and answered batches of queries
faster at the same recall. The approximate kinds'
search effort (efSearch, nprobe) is tuned at build time to reach `target_recall` of the exact
top 10, on 500 of the codes held out of the index until the end (so they search like new
objects); the recall reached is recorded in meta.json.
"""

from deepfield.tasks.search.embed import FORMS, code_form, embed_store, model_identity
from deepfield.tasks.search.index import KINDS, build_index
from deepfield.tasks.search.query import INDEX_FORMAT_VERSION, SimilarityIndex, open_index, read_image_file

__all__ = ["INDEX_FORMAT_VERSION", "KINDS", "FORMS", "SimilarityIndex", "embed_store", "code_form", "build_index",
           "open_index", "model_identity", "read_image_file"]
