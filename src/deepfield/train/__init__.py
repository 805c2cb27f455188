"""Training: Lightning around deepfield models; checkpoints, resume, early stopping, DDP."""

from deepfield.train.fit import (TrainingDiverged, TrainingInterrupted, TrainSettings, build_model,
                                 evaluate_mse, load_yaml_config, train, training_dir)
from deepfield.train.gan import train_gan  # registers the adversarial trainer

__all__ = ["train", "train_gan", "TrainSettings", "TrainingInterrupted", "TrainingDiverged", "build_model",
           "evaluate_mse", "load_yaml_config", "training_dir"]
