"""Tests for dpiat_jax.experiments.data: offline loaders, TFDS (mocked, no network), batching."""

import random

import numpy as np
import pytest

from dpiat_jax.experiments import data


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


# ---------------------------------------------------------------------------
# Offline datasets.
# ---------------------------------------------------------------------------


def test_digits_shapes_and_dtypes(digits):
    assert digits.name == "digits"
    assert digits.num_classes == 10
    assert digits.input_shape == (8, 8, 1)
    assert digits.num_train + digits.num_test == 1797
    assert digits.num_test == pytest.approx(0.2 * 1797, abs=1)
    for x, y in [(digits.x_train, digits.y_train), (digits.x_test, digits.y_test)]:
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.shape[1:] == (8, 8, 1) and y.shape == (len(x),)
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert set(np.unique(y)) == set(range(10))


def test_digits_split_is_deterministic(digits):
    again = data.load_digits()
    np.testing.assert_array_equal(digits.x_train, again.x_train)
    np.testing.assert_array_equal(digits.y_test, again.y_test)
    other = data.load_digits(seed=1)
    assert not np.array_equal(digits.y_train, other.y_train)
    assert data.load_digits(test_fraction=0.5).num_test == pytest.approx(1797 / 2, abs=1)


def test_mnist1d_offline_shapes_determinism_and_no_side_effects(no_network, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # mnist1d's get_dataset would write a pickle here
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)

    ds = data.load_mnist1d(num_samples=500)

    assert (np.random.rand(), random.random()) == (expected_np, expected_py)
    assert list(tmp_path.iterdir()) == []
    assert ds.name == "mnist1d" and ds.num_classes == 10
    assert ds.x_train.shape == (400, 40, 1) and ds.x_test.shape == (100, 40, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.input_shape == (40, 1)
    again = data.load_mnist1d(num_samples=500)
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    np.testing.assert_array_equal(ds.y_test, again.y_test)
    other = data.load_mnist1d(num_samples=500, seed=1)
    assert not np.array_equal(ds.x_train, other.x_train)


def test_harder_digits(digits):
    hard = data.load_digits(size=12, noise=0.3, max_shift=2, copies=2)
    assert hard.input_shape == (12, 12, 1) and hard.name == "digits12"
    # The same split as the raw digits, drawn before the copies: no test digit in training.
    assert hard.num_train == 2 * digits.num_train and hard.num_test == digits.num_test
    np.testing.assert_array_equal(hard.y_train, np.tile(digits.y_train, 2))
    np.testing.assert_array_equal(hard.y_test, digits.y_test)
    assert hard.x_train.dtype == np.float32
    # Two copies of a digit differ (shift and noise), and the data are a pure function.
    n = digits.num_train
    assert not np.array_equal(hard.x_train[:n], hard.x_train[n:])
    again = data.load_digits(size=12, noise=0.3, max_shift=2, copies=2)
    np.testing.assert_array_equal(hard.x_test, again.x_test)
    # Without noise or shift, the copies are the resized digits themselves.
    plain = data.load_digits(copies=2)
    np.testing.assert_allclose(plain.x_train, np.concatenate([digits.x_train] * 2), atol=1e-6)
    np.testing.assert_allclose(plain.x_test, digits.x_test, atol=1e-6)
    # Through the config path: data.load passes the keyword arguments on.
    assert data.load("digits", size=12, noise=0.3, max_shift=2).input_shape == (12, 12, 1)


def test_mnist1d_noise_scale(no_network):
    base = data.load_mnist1d(num_samples=300)
    noisy = data.load_mnist1d(num_samples=300, noise_scale=3.0)
    np.testing.assert_array_equal(base.y_train, noisy.y_train)
    assert not np.allclose(base.x_train, noisy.x_train)
    clean = data.load_mnist1d(num_samples=300, noise_scale=0.0)

    # The noise is what the scale multiplies: less of it, closer to the noiseless signal.
    def distance(ds):
        return np.abs(ds.x_train - clean.x_train).mean()

    assert distance(noisy) > distance(base)


def test_mnist1d_default_size():
    ds = data.load("mnist1d")
    assert (ds.num_train, ds.num_test) == (4000, 1000)


def test_load_dispatches_offline_names(digits):
    ds = data.load("digits")
    np.testing.assert_array_equal(ds.x_train, digits.x_train)


def test_dataset_validation_and_take(digits):
    small = digits.take(10, 5)
    assert (small.num_train, small.num_test) == (10, 5)
    assert small.input_shape == digits.input_shape
    with pytest.raises(ValueError):
        data.Dataset(digits.x_train, digits.y_train[:3], digits.x_test, digits.y_test, 10, "bad")


# ---------------------------------------------------------------------------
# TFDS through data_source, mocked.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, shape, num_classes",
    [("cifar10", (32, 32, 3), 10), ("mnist", (28, 28, 1), 10), ("cifar100", (32, 32, 3), 100)],
)
def test_tfds_mocked(no_network, name, shape, num_classes):
    tfds = pytest.importorskip("tensorflow_datasets")
    # No metadata files ship with the package, so the mock uses the builder code
    # (MockPolicy.AUTO falls back to USE_CODE); splits are then unknown to TFDS
    # and must be passed explicitly, which load_tfds does.
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load(name, max_examples=10)
    assert ds.name == name and ds.num_classes == num_classes
    assert ds.x_train.shape == (10, *shape) and ds.x_test.shape == (10, *shape)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert ((0 <= ds.y_train) & (ds.y_train < num_classes)).all()


def test_tfds_mocked_variable_size_images(no_network):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        ds = data.load_tfds("imagenette", image_size=24)
        assert ds.x_train.shape == (6, 24, 24, 3) and ds.x_test.shape == (6, 24, 24, 3)
        with pytest.raises(ValueError, match="image_size"):
            data.load_tfds("imagenette")


def test_resize_and_center_crop():
    image = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10, 1)
    out = data._resize_and_center_crop(image, 6)
    np.testing.assert_array_equal(out, image[:, 2:8])
    assert data._resize_and_center_crop(image, 3).shape == (3, 3, 1)


# ---------------------------------------------------------------------------
# Batching and augmentation.
# ---------------------------------------------------------------------------


def _toy(n=103, shape=(8, 8, 1)):
    x = np.random.default_rng(0).random((n, *shape), dtype=np.float32)
    return x, np.arange(n, dtype=np.int32)


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_cover_every_example_once(shuffle):
    x, y = _toy()
    got = list(data.batches(x, y, 10, rng=np.random.default_rng(0), shuffle=shuffle))
    assert [len(b[1]) for b in got] == [10] * 10 + [3]
    seen = np.concatenate([b[1] for b in got])
    assert sorted(seen) == list(range(len(y)))
    assert (seen == np.arange(len(y))).all() != shuffle
    for xb, yb in got:
        np.testing.assert_array_equal(xb, x[yb])


def test_batches_drop_last():
    x, y = _toy()
    got = list(data.batches(x, y, 10, drop_last=True))
    assert [len(b[1]) for b in got] == [10] * 10


def test_batches_deterministic_for_a_seed():
    x, y = _toy()

    def run(seed):
        rng = np.random.default_rng(seed)
        return [b for _ in range(2) for b in data.batches(x, y, 16, rng=rng, augment=True)]

    first, second, other = run(3), run(3), run(4)
    for (xa, ya), (xb, yb) in zip(first, second, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(first[0][1], other[0][1])
    # A shared generator gives a fresh order each epoch.
    assert not np.array_equal(first[0][1], first[7][1])


@pytest.mark.parametrize("shape", [(8, 8, 1), (32, 32, 3), (40, 1)])
def test_augmentation_keeps_shapes_and_translates(shape):
    x, y = _toy(20, shape)
    ((xb, yb),) = data.batches(x, y, 20, shuffle=False, augment=True, flip=True)
    assert xb.shape == x.shape and xb.dtype == x.dtype
    np.testing.assert_array_equal(yb, y)
    assert not np.array_equal(xb, x)
    # Values are a translated (and possibly flipped) copy, padded with zeros.
    pad = 4 if min(shape[:-1]) >= 32 else 1
    for original, augmented in zip(x, xb, strict=True):
        assert np.isin(augmented[augmented != 0], original).all()
        assert (augmented != 0).sum() >= np.prod([s - 2 * pad for s in shape[:-1]]) * shape[-1]


def test_augment_flip_mirrors_images():
    x = np.zeros((64, 8, 8, 1), np.float32)
    x[:, 3:5, 1] = 1.0  # a vertical bar near the left edge; shifts keep it in columns 0..2
    xb = data.augment_batch(x, np.random.default_rng(0), flip=True)
    assert (xb.sum(axis=(1, 2, 3)) == 2).all()
    right = xb[:, :, -3:].sum(axis=(1, 2, 3)) > 0
    assert 0 < right.sum() < len(x)
    assert data.augment_batch(x[:, 0, 0], np.random.default_rng(0)).shape == (64, 1)
