"""Model families. Each is a torch.nn.Module built from a frozen config dataclass.

| family (CLI) | class | what |
|---|---|---|
| pca | PCA | principal components (exact, randomised, incremental) |
| ae | DenseAutoencoder | fully connected autoencoder (denoising / sparse options) |
| conv-ae | ConvAutoencoder | convolutional autoencoder (denoising / sparse options) |
| vae | VAE | (beta-)VAE; gaussian, bernoulli, or PSF + noise observation-model likelihoods |
| cvae | VAE | the same, conditioned on catalog columns (size, magnitude, redshift) |
| pixelcnn | PixelCNN | gated PixelCNN: exact log-likelihood of asinh-stretched, quantised images |
| dcgan | DCGAN | GAN with the non-saturating loss |
| wgan-gp | WGANGP | Wasserstein GAN with gradient penalty |
| cgan | ConditionalGAN | GAN conditioned on catalog columns |
| cyclegan | CycleGAN | unpaired translation between two surveys' stores |
| deconvolver | Deconvolver | supervised deconvolution + denoising, trained on simulated truth |
| flow | LatentFlow | a latent prior: normalizing flow on a trained VAE's codes (conditional) |
| gmm | GaussianMixturePrior | a latent prior: Gaussian mixture on a trained VAE's codes |

Each family plays the roles of :mod:`deepfield.models.protocol` it inherits (encode, sample,
log_prob, elbo, loss, ...) and names its trainer; :func:`deepfield.models.protocol.capabilities`
reads them, and :data:`FAMILIES` maps each registered family name to its class. A new family is
one module whose class carries ``@register``, plus its import below.
"""

from deepfield.models.autoencoder import (AutoencoderConfig, ConvAutoencoder, ConvAutoencoderConfig,
                                          DenseAutoencoder)
from deepfield.models.base import FAMILIES, MODEL_REGISTRY, Model, family_class, register
from deepfield.models.cyclegan import CycleGAN
from deepfield.models.deconvolver import Deconvolver, DeconvolverConfig
from deepfield.models.folder import load_model, save_model
from deepfield.models.gan import DCGAN, WGANGP, ConditionalGAN
from deepfield.models.pca import PCA, PCAConfig
from deepfield.models.pixelcnn import PixelCNN, PixelCNNConfig
from deepfield.models.prior import GaussianMixturePrior, LatentFlow, LatentPriorConfig
from deepfield.models.protocol import LossOutput, capabilities
from deepfield.models.vae import VAE, VAEConfig

__all__ = ["Model", "MODEL_REGISTRY", "FAMILIES", "register", "family_class", "capabilities", "LossOutput",
           "PCA", "PCAConfig", "DenseAutoencoder", "AutoencoderConfig", "ConvAutoencoder", "ConvAutoencoderConfig",
           "save_model", "load_model", "VAE", "VAEConfig", "LatentFlow", "GaussianMixturePrior", "LatentPriorConfig",
           "PixelCNN", "PixelCNNConfig", "DCGAN", "WGANGP", "ConditionalGAN", "CycleGAN",
           "Deconvolver", "DeconvolverConfig"]
