"""Frechet distances between the feature distributions of real and generated images.

    d^2 = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2})        (Heusel et al. 2017)

FID is this distance in the 2,048 pool features of the Inception-v3 network of the FID reference
code (TensorFlow's, ported by pytorch-fid: 1,008 classes, no auxiliary logits, patched blocks).
The network is pytorch-fid's own (``pytorch_fid.inception.InceptionV3``), and its inputs are
prepared as pytorch-fid prepares them (bilinear resize to 299 px, [0, 1] scaled to [-1, 1]).
With the reference weights it is the field's FID up to one difference: the samples are scored as
the network generates them, not rounded to 8-bit images first as published sample sets are. Those weights come from the
internet, so FID is computed only from a local file (``inception_weights``: pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth``) and is called ``fid``. Otherwise the features are those
of a small classifier trained in the job on the same labelled data, and the figure is called
``frechet_classifier``: comparable between runs on the same data and classifier steps, never with
published FIDs.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import SmallCNN
from trainer.rng import forked_rng

CLASSIFIER_WIDTH = 32


def frechet_distance(
    mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """The squared Frechet distance between N(mean_a, cov_a) and N(mean_b, cov_b)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # singular: handled below
        root = scipy.linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():  # regularise as the reference code (pytorch-fid) does
            offset = np.eye(cov_a.shape[0]) * 1e-6
            root = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = root.real
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def feature_statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    array = features.double().cpu().numpy()
    return array.mean(axis=0), np.cov(array, rowvar=False)


class FeatureDistance:
    """Features of images on [-1, 1] and the Frechet distance of a sample set to the reference set."""

    name: str
    network: nn.Module

    def features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def set_reference(self, images: torch.Tensor) -> None:
        self.reference = feature_statistics(self.features(images))

    @torch.no_grad()
    def distance(self, images: torch.Tensor) -> float:
        return frechet_distance(*self.reference, *feature_statistics(self.features(images)))


class ClassifierFeatures(FeatureDistance):
    """The pooled features of a small CNN trained to classify the real images (seeded, Adam)."""

    name = "frechet_classifier"

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        steps: int,
        device: torch.device,
        seed: int = 0,
    ):
        generator = torch.Generator().manual_seed(seed)
        with forked_rng(device):
            torch.manual_seed(seed)
            self.network = SmallCNN(images.shape[1], CLASSIFIER_WIDTH).to(device)
            head = nn.Linear(self.network.feature_dim, int(labels.max()) + 1).to(device)
        optimizer = torch.optim.Adam([*self.network.parameters(), *head.parameters()], lr=1e-3)
        self.network.train()
        for _ in range(steps):
            index = torch.randint(
                0, images.shape[0], (min(128, images.shape[0]),), generator=generator
            )
            loss = F.cross_entropy(
                head(self.network(images[index].to(device))), labels[index].to(device)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        self.network.eval().requires_grad_(False)
        self.device = device

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.network(chunk.to(self.device)) for chunk in images.split(512)])


class InceptionFeatures(FeatureDistance):
    """pytorch-fid's FID Inception-v3 with the weights in a local file: the 2,048 pool features."""

    name = "fid"

    def __init__(self, weights_path: str, device: torch.device):
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"inception_weights {weights_path} does not exist") from None
        self.network = fid_inception(state).eval().requires_grad_(False).to(device)
        self.device = device

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in images.split(64):
            chunk = chunk.to(self.device)
            if chunk.shape[1] == 1:
                chunk = chunk.expand(-1, 3, -1, -1)
            # the network resizes to 299 px and scales [0, 1] to [-1, 1], as pytorch-fid feeds it
            (pooled,) = self.network((chunk + 1) / 2)
            out.append(pooled.flatten(1))
        return torch.cat(out)


def fid_inception(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """pytorch-fid's ``InceptionV3`` up to its pool features, holding ``state_dict`` (the FID
    network's: the reference file, or any state of that architecture) instead of the weights the
    package would download. A state of another network is refused, naming what does not fit."""
    import pytorch_fid.inception as package

    download = package.load_state_dict_from_url
    package.load_state_dict_from_url = lambda *args, **kwargs: state_dict
    try:
        return package.InceptionV3([package.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    except (RuntimeError, TypeError, AttributeError) as error:  # not that network's state dict
        raise ValueError(
            f"inception_weights is not a state of pytorch-fid's FID Inception-v3: {error}"
        ) from None
    finally:
        package.load_state_dict_from_url = download
