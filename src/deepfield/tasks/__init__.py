"""Tasks: what you do with a store and a trained model (encode, reconstruct, sample, ...)."""

from deepfield.tasks.apply import map_store, progress_bar, resolve_indices
from deepfield.tasks.evaluate import evaluate_morphology
from deepfield.tasks.latent import edit_attributes, interpolate, traversal_grid
from deepfield.tasks.sample import parse_condition, sample_store
from deepfield.tasks.encode import (check_model_store, codes_to_parquet, denoise_store, encode_store,
                                    reconstruct_store)

__all__ = ["map_store", "progress_bar", "resolve_indices", "encode_store", "reconstruct_store",
           "codes_to_parquet", "check_model_store", "sample_store", "parse_condition", "denoise_store", "interpolate", "traversal_grid", "edit_attributes", "evaluate_morphology"]
