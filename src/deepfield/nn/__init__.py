"""Building blocks shared by every model family: MLPs, convolutional encoder/decoder stages.

Shapes follow PyTorch: images (N, C, H, W), vectors (N, D). Nothing here knows about stores,
files or training.
"""

from deepfield.nn.blocks import MLP, ConvDecoder, ConvEncoder, ResidualBlock, downsample_plan, stage_channels
from deepfield.nn.conditions import ConditionNormaliser

__all__ = ["ConditionNormaliser", "MLP", "ConvEncoder", "ConvDecoder", "ResidualBlock", "downsample_plan",
           "stage_channels"]
