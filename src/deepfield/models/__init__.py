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

The autoencoding families (pca, ae, conv-ae, vae, cvae) share encode/decode; PixelCNN gives
``log_prob``; the GANs ``sample`` (and codes through their izi_f encoder). GANs train through
:func:`deepfield.train.gan.train_gan`, the rest through :func:`deepfield.train.train`.
"""

from deepfield.models.autoencoder import (AutoencoderConfig, ConvAutoencoder, ConvAutoencoderConfig,
                                          DenseAutoencoder)
from deepfield.models.base import MODEL_REGISTRY, Model, register
from deepfield.models.folder import load_model, save_model
from deepfield.models.gan import DCGAN, WGANGP, ConditionalGAN, CycleGAN
from deepfield.models.pca import PCA, PCAConfig
from deepfield.models.pixelcnn import PixelCNN, PixelCNNConfig
from deepfield.models.prior import GaussianMixturePrior, LatentFlow, LatentPriorConfig
from deepfield.models.vae import VAE, VAEConfig

__all__ = ["Model", "MODEL_REGISTRY", "register", "PCA", "PCAConfig", "DenseAutoencoder",
           "AutoencoderConfig", "ConvAutoencoder", "ConvAutoencoderConfig", "FAMILIES",
           "save_model", "load_model", "VAE", "VAEConfig", "LatentFlow", "GaussianMixturePrior", "LatentPriorConfig",
           "PixelCNN", "PixelCNNConfig", "DCGAN", "WGANGP", "ConditionalGAN", "CycleGAN", "AUTOENCODING"]

#: CLI family name -> model class
FAMILIES = {**{cls.family: cls for cls in (PCA, DenseAutoencoder, ConvAutoencoder, VAE)}, "cvae": VAE,
            "pixelcnn": PixelCNN, **{cls.family: cls for cls in (DCGAN, WGANGP, ConditionalGAN, CycleGAN)}}
#: families with latent codes: encode(x) -> z, decode(z) -> x
AUTOENCODING = ("pca", "ae", "conv-ae", "vae", "cvae")
