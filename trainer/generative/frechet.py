"""Frechet distances between the feature distributions of real and generated images.

    d^2 = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2})        (Heusel et al. 2017)

FID is this distance in the 2,048 pool features of the Inception-v3 network whose weights the FID
reference code uses; those weights come from the internet, so FID is computed only from a local
weights file (``inception_weights``) and is called ``fid``. Otherwise the features are those of a
small classifier trained in the job on the same labelled data, and the figure is called
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
    """torchvision's Inception-v3 from a local state dict: the 2,048 pool features at 299 px."""

    name = "fid"

    def __init__(self, weights_path: str, device: torch.device):
        from torchvision.models import inception_v3

        network = inception_v3(weights=None, aux_logits=True, init_weights=False)
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"inception_weights {weights_path} does not exist") from None
        network.load_state_dict(state)
        network.fc = nn.Identity()
        self.network = network.eval().requires_grad_(False).to(device)
        self.device = device

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in images.split(64):
            chunk = chunk.to(self.device)
            if chunk.shape[1] == 1:
                chunk = chunk.expand(-1, 3, -1, -1)
            chunk = F.interpolate(chunk, size=(299, 299), mode="bilinear", align_corners=False)
            out.append(self.network(chunk))  # torchvision's Inception expects inputs on [-1, 1]
        return torch.cat(out)
