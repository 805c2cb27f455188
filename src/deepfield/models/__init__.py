"""Model families. Each is a torch.nn.Module built from a frozen config dataclass.

| family (CLI) | class | what |
|---|---|---|
| pca | PCA | principal components (exact, randomised, incremental) |
| ae | DenseAutoencoder | fully connected autoencoder (denoising / sparse options) |
| conv-ae | ConvAutoencoder | convolutional autoencoder (denoising / sparse options) |
| vae | VAE | (beta-)VAE; gaussian, bernoulli, or PSF + noise observation-model likelihoods |
| cvae | VAE | the same, conditioned on catalog columns (size, magnitude, redshift) |
"""

from deepfield.models.autoencoder import (AutoencoderConfig, ConvAutoencoder, ConvAutoencoderConfig,
                                          DenseAutoencoder)
from deepfield.models.base import MODEL_REGISTRY, Model, register
from deepfield.models.folder import load_model, save_model
from deepfield.models.pca import PCA, PCAConfig
from deepfield.models.prior import GaussianMixturePrior, LatentFlow, LatentPriorConfig
from deepfield.models.vae import VAE, VAEConfig

__all__ = ["Model", "MODEL_REGISTRY", "register", "PCA", "PCAConfig", "DenseAutoencoder",
           "AutoencoderConfig", "ConvAutoencoder", "ConvAutoencoderConfig", "FAMILIES",
           "save_model", "load_model", "VAE", "VAEConfig", "LatentFlow", "GaussianMixturePrior", "LatentPriorConfig"]

#: CLI family name -> model class
FAMILIES = {**{cls.family: cls for cls in (PCA, DenseAutoencoder, ConvAutoencoder, VAE)}, "cvae": VAE}
from deepfield.models.pixelcnn import PixelCNN, PixelCNNConfig  # noqa: E402  (pixelcnn: exact likelihoods)
FAMILIES["pixelcnn"] = PixelCNN
from deepfield.models.gan import CycleGAN, ConditionalGAN, DCGAN, WGANGP  # noqa: E402  (adversarial families)
FAMILIES.update({cls.family: cls for cls in (DCGAN, WGANGP, ConditionalGAN, CycleGAN)})
