"""Tasks: what you do with a store and a trained model (encode, reconstruct, sample, compare,
score anomalies, search, translate, ...)."""

from deepfield.tasks.anomaly import calibrate_table, detection_metrics, ensemble_scores, fit_ensemble, score_store
from deepfield.tasks.apply import map_store, progress_bar, resolve_indices
from deepfield.tasks.c2st import classifier_two_sample_test
from deepfield.tasks.compare import compare_stores, likelihood_ratio_store, log_likelihood_store
from deepfield.tasks.encode import (check_model_store, codes_to_parquet, denoise_store, encode_store,
                                    reconstruct_store)
from deepfield.tasks.evaluate import evaluate_morphology
from deepfield.tasks.gan_score import gan_anomaly_scores, gan_score_store
from deepfield.tasks.latent import edit_attributes, interpolate, traversal_grid
from deepfield.tasks.sample import parse_condition, sample_store
from deepfield.tasks.search import build_index, embed_store, open_index
from deepfield.tasks.translate import translate_store

__all__ = ["map_store", "progress_bar", "resolve_indices", "encode_store", "reconstruct_store",
           "codes_to_parquet", "check_model_store", "sample_store", "parse_condition", "denoise_store",
           "interpolate", "traversal_grid", "edit_attributes", "evaluate_morphology", "classifier_two_sample_test",
           "score_store", "ensemble_scores", "fit_ensemble", "calibrate_table", "detection_metrics",
           "log_likelihood_store", "likelihood_ratio_store", "compare_stores",
           "gan_anomaly_scores", "gan_score_store", "translate_store",
           "embed_store", "build_index", "open_index"]
