"""Tasks: what you do with a store and a trained model (encode, reconstruct, ...)."""

from deepfield.tasks.apply import map_store, progress_bar, resolve_indices
from deepfield.tasks.encode import check_model_store, codes_to_parquet, encode_store, reconstruct_store

__all__ = ["map_store", "progress_bar", "resolve_indices", "encode_store", "reconstruct_store",
           "codes_to_parquet", "check_model_store"]
