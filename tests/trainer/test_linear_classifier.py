import pytest
import torch

from models import SmallCNN
from trainer.data.datasets import load_digits_split
from trainer.linear_classifier import center_view, extract_features, train_linear_probe


def test_center_view_sizes():
    images = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    assert center_view(images, 16).shape == (2, 3, 16, 16)
    wide = torch.rand(2, 3, 300, 400)
    assert center_view(wide, 224, crop_fraction=0.875).shape == (2, 3, 224, 224)


def test_extract_features_leaves_batch_norm_statistics_untouched():
    encoder = SmallCNN(width=8)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    features = extract_features(
        encoder, torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8), 16, batch_size=4
    )
    assert features.shape == (10, encoder.feature_dim) and encoder.training
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_probe_close_to_logistic_regression_on_raw_digits():
    from sklearn.linear_model import LogisticRegression

    train, test = load_digits_split("train"), load_digits_split("test")
    x_train, x_test = train.images.flatten(1).float(), test.images.flatten(1).float()
    ours = train_linear_probe(x_train, train.labels, x_test, test.labels, epochs=30)
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    reference = LogisticRegression(max_iter=2000).fit(
        ((x_train - mean) / std).numpy(), train.labels.numpy()
    )
    sklearn_top1 = 100 * reference.score(((x_test - mean) / std).numpy(), test.labels.numpy())
    assert ours.top1 == pytest.approx(sklearn_top1, abs=2.0)
    assert ours.top5 >= ours.top1 and ours.train_images == 1347 and ours.test_images == 450
