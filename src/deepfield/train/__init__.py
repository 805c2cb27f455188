"""Training: Lightning around deepfield models; checkpoints, resume, early stopping, DDP."""

from deepfield.train.fit import (TrainingDiverged, TrainingInterrupted, TrainSettings, build_model,
                                 evaluate_mse, load_yaml_config, train, training_dir)

__all__ = ["train", "TrainSettings", "TrainingInterrupted", "TrainingDiverged", "build_model",
           "evaluate_mse", "load_yaml_config", "training_dir"]
