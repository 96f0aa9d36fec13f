"""Datasets and numpy batching for training and evaluating transfer experiments.

Every loader returns a :class:`Dataset`: plain numpy arrays held in host memory,
images as float32 NHWC in ``[0, 1]`` (or standardised signals for MNIST-1D) and
labels as int32. Datasets used in the experiments are small enough for this, and
keeping them as numpy makes batching deterministic and independent of any input
pipeline library.

Two datasets are available offline: ``"digits"`` (scikit-learn's bundled 8x8
digits) and ``"mnist1d"`` (generated locally by the ``mnist1d`` package). Every
other name is read through :func:`tensorflow_datasets.data_source`, which works
without TensorFlow; it downloads and prepares the dataset on first use unless
``download=False``. ``load(name, data_dir=DIR)`` reads a TFDS dataset already prepared
in ``DIR`` and never downloads: a dataset that is absent there, or stored in a format
without random access (TFRecord), raises :class:`DataNotFoundError` saying how to
prepare it.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DataNotFoundError",
    "Dataset",
    "batches",
    "load",
    "load_digits",
    "load_mnist1d",
    "load_tfds",
]

# Datasets that ship no "test" split; their held-out split is "validation".
_VALIDATION_AS_TEST = ("imagenette", "imagewoof", "imagenet2012", "imagenet_resized")


class DataNotFoundError(FileNotFoundError):
    """A TFDS dataset is not in its data directory in a readable form, and downloading is off.

    The message names the folder that was searched and the commands that prepare the
    dataset there; it is meant to be shown to users as is.
    """


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """An in-memory classification dataset split into train and test parts.

    Attributes:
      x_train: Training inputs, shape ``(N_train, *input_shape)``, float32.
      y_train: Training labels, shape ``(N_train,)``, int32 in ``[0, num_classes)``.
      x_test: Test inputs, shape ``(N_test, *input_shape)``, float32.
      y_test: Test labels, shape ``(N_test,)``, int32.
      num_classes: Number of label classes (the width of a classifier's output).
      name: Human-readable dataset name, e.g. ``"digits"`` or ``"cifar10"``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str

    def __post_init__(self):
        if len(self.x_train) != len(self.y_train):
            raise ValueError(
                f"x_train has {len(self.x_train)} examples, y_train {len(self.y_train)}."
            )
        if len(self.x_test) != len(self.y_test):
            raise ValueError(f"x_test has {len(self.x_test)} examples, y_test {len(self.y_test)}.")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"Train and test example shapes differ: {self.x_train.shape[1:]} "
                f"vs {self.x_test.shape[1:]}."
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example without the batch axis, e.g. ``(32, 32, 3)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return len(self.x_train)

    @property
    def num_test(self) -> int:
        """Number of test examples."""
        return len(self.x_test)

    def take(self, num_train: int | None = None, num_test: int | None = None) -> Dataset:
        """Returns a copy keeping only the first ``num_train``/``num_test`` examples.

        Useful for quick experiments and tests; ``None`` keeps a split whole.

        Args:
          num_train: training examples kept.
          num_test: test examples kept.

        Returns:
          The shortened dataset (the arrays are views of this one's).
        """
        return dataclasses.replace(
            self,
            x_train=self.x_train[:num_train],
            y_train=self.y_train[:num_train],
            x_test=self.x_test[:num_test],
            y_test=self.y_test[:num_test],
        )


# ---------------------------------------------------------------------------
# Offline datasets.
# ---------------------------------------------------------------------------


def load_digits(
    test_fraction: float = 0.2,
    seed: int = 0,
    *,
    size: int = 8,
    noise: float = 0.0,
    max_shift: int = 0,
    copies: int = 1,
) -> Dataset:
    """Loads scikit-learn's bundled 8x8 handwritten digits (1797 examples, offline).

    At the defaults these are the raw digits. The other arguments make a harder, larger
    variant for experiments where the raw set saturates (every model reaches 0.9-0.98):
    images upsampled to ``size`` x ``size`` (bilinear), each example drawn ``copies``
    times with a random translation of up to ``max_shift`` pixels and Gaussian pixel noise
    of standard deviation ``noise``. Train and test are split before the copies are drawn
    (no test digit appears in training); the test split gets one noisy, shifted copy.

    Args:
      test_fraction: Fraction of examples held out as the test split.
      seed: Seed of the stratified train/test split and of the shifts and noise; the
        data are a pure function of the arguments.
      size: Side of the images (8 keeps the originals).
      noise: Standard deviation of the added pixel noise (images are in [0, 1]).
      max_shift: Largest translation in pixels along each axis (zero padding).
      copies: Drawn copies of every training example.

    Returns:
      A :class:`Dataset` with images of shape ``(N, size, size, 1)`` (the raw pixel
      values 0..16 divided by 16, then resized, shifted and noised) and 10 classes.
    """
    from sklearn import datasets as sk_datasets
    from sklearn import model_selection

    digits = sk_datasets.load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., None]
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    if (size, noise, max_shift, copies) != (8, 0.0, 0, 1):
        rng = np.random.default_rng(seed)
        x_train, y_train = _harder(x_train, y_train, size, noise, max_shift, copies, rng)
        x_test, y_test = _harder(x_test, y_test, size, noise, max_shift, 1, rng)
    return Dataset(
        x_train=np.ascontiguousarray(x_train, np.float32),
        y_train=np.ascontiguousarray(y_train),
        x_test=np.ascontiguousarray(x_test, np.float32),
        y_test=np.ascontiguousarray(y_test),
        num_classes=10,
        name="digits" if size == 8 and not noise and not max_shift else f"digits{size}",
    )


def _harder(
    x: np.ndarray,
    y: np.ndarray,
    size: int,
    noise: float,
    max_shift: int,
    copies: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Upsampled, shifted, noisy copies of ``(x, y)`` (see :func:`load_digits`)."""
    import jax  # the resize only; loading the raw digits needs no jax

    x = np.asarray(jax.image.resize(x, (len(x), size, size, 1), "bilinear"))
    xs, ys = [], []
    for _ in range(copies):
        shifted = np.zeros_like(x)
        pad = np.pad(x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
        offsets = rng.integers(0, 2 * max_shift + 1, (len(x), 2))
        for i, (dy, dx) in enumerate(offsets):
            shifted[i] = pad[i, dy : dy + size, dx : dx + size]
        xs.append(shifted + rng.normal(0.0, noise, shifted.shape).astype(np.float32))
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def load_mnist1d(
    num_samples: int | None = None,
    seed: int = 0,
    train_fraction: float = 0.8,
    noise_scale: float = 1.0,
) -> Dataset:
    """Generates the MNIST-1D dataset locally with the ``mnist1d`` package.

    ``mnist1d.data.get_dataset`` downloads a pickle from GitHub by default (and
    writes it to the working directory), so this calls ``make_dataset`` directly,
    which only runs the numpy generator: no network and no files. ``make_dataset``
    reseeds numpy's and Python's global random generators; their states are saved
    and restored around the call so that loading has no side effects.

    Args:
      num_samples: Total number of examples (train + test); ``None`` uses the
        package default of 5000 (4000 train, 1000 test).
      seed: Generator seed. The published pickle was generated with seed 42.
      train_fraction: Fraction of examples in the training split.
      noise_scale: Multiplies the generator's correlated and i.i.d. noise scales
        (``corr_noise_scale``, ``iid_noise_scale``): above 1 gives a harder dataset.

    Returns:
      A :class:`Dataset` with signals of shape ``(N, 40, 1)``, float32,
      standardised to zero mean and unit variance, and 10 classes.
    """
    from mnist1d import data as mnist1d_data

    args = mnist1d_data.get_dataset_args(as_dict=True)
    args["seed"] = seed
    args["train_split"] = train_fraction
    if num_samples is not None:
        args["num_samples"] = num_samples
    args["corr_noise_scale"] *= noise_scale
    args["iid_noise_scale"] *= noise_scale
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        raw = mnist1d_data.make_dataset(_AttrDict(args))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)

    def _x(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float32)[..., None]

    return Dataset(
        x_train=_x(raw["x"]),
        y_train=raw["y"].astype(np.int32),
        x_test=_x(raw["x_test"]),
        y_test=raw["y_test"].astype(np.int32),
        num_classes=10,
        name="mnist1d",
    )


class _AttrDict(dict):
    """Dict with attribute access, the argument type ``mnist1d.make_dataset`` expects."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e


# ---------------------------------------------------------------------------
# TensorFlow Datasets (without TensorFlow).
# ---------------------------------------------------------------------------


def load_tfds(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    train_split: str = "train",
    test_split: str | None = None,
    max_examples: int | None = None,
    image_size: int | None = None,
    download: bool = True,
) -> Dataset:
    """Loads an image classification dataset through ``tfds.data_source``.

    Any TFDS dataset with an ``"image"`` and a ``"label"`` (``ClassLabel``)
    feature works, e.g. ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``
    and ``imagenette``. ``tfds.data_source`` reads ArrayRecord files and decodes
    with numpy/PIL, so TensorFlow is not needed.

    Args:
      name: TFDS name, optionally with config and version
        (``"imagenette/160px-v2"``).
      data_dir: TFDS data directory; ``None`` uses TFDS's default.
      train_split: Split used as the training set (any TFDS split string).
      test_split: Split used as the test set. ``None`` picks ``"test"``, or
        ``"validation"`` when the dataset has no test split (imagenette, ...).
      max_examples: If given, keep only the first ``max_examples`` of each split.
      image_size: If given, every image is resized so that its shorter side is
        ``image_size`` and then centre-cropped to ``image_size x image_size``.
        Required when the dataset's images do not all share one shape
        (e.g. full-size imagenette).
      download: Whether TFDS may download and prepare the dataset if it is not
        in ``data_dir`` yet (this is the only code path that uses the network).

    Returns:
      A :class:`Dataset` with float32 NHWC images in ``[0, 1]`` and int32 labels.

    Raises:
      DataNotFoundError: with ``download=False``, when the dataset is not prepared in
        ``data_dir`` or is stored in a format ``tfds.data_source`` cannot read.
    """
    import tensorflow_datasets as tfds

    if test_split is None:
        test_split = _default_test_split(name)
    data_dir = None if data_dir is None else os.fspath(data_dir)
    try:
        sources = {
            split: tfds.data_source(name, split=split, data_dir=data_dir, download=download)
            for split in (train_split, test_split)
        }
    except Exception as err:  # noqa: BLE001 - TFDS reports missing data with many types
        problem = None if download else _local_data_problem(name, data_dir)
        if problem is None:
            raise
        raise DataNotFoundError(problem) from err
    info = sources[train_split].dataset_info
    features = info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"TFDS dataset {name!r} needs 'image' and 'label' features; it has {list(features)}."
        )
    x_train, y_train = _read_split(sources[train_split], max_examples, image_size, name)
    x_test, y_test = _read_split(sources[test_split], max_examples, image_size, name)
    return Dataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=int(features["label"].num_classes),
        name=name,
    )


def _local_data_problem(name: str, data_dir: str | None) -> str | None:
    """Explains why TFDS cannot read ``name`` from ``data_dir`` without downloading.

    ``tfds.data_source(..., download=False)`` reports a dataset that is absent from its
    data directory as a TFRecord-format error, which misleads; this looks at the
    directory itself.

    Args:
      name: the TFDS name, as given to :func:`load_tfds`.
      data_dir: the data directory; ``None`` is TFDS's default (``~/tensorflow_datasets``).

    Returns:
      A message naming the folder and the commands that prepare the dataset there, or
      ``None`` when the dataset is there in a random-access format (the failure is
      something else, and the original error should stand).
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import file_adapters

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        root, folder = os.fspath(builder.data_dir_root), os.fspath(builder.data_dir)
        prepared = builder.is_prepared()
        file_format = builder.info.file_format
    except Exception:  # noqa: BLE001 - an unknown name etc.: TFDS's own error is clearer
        return None
    build = f"tfds build {name} --data_dir {root} --file_format array_record"
    if not prepared:
        base = os.path.join(root, name.split("/")[0].split(":")[0])
        return (
            f"TFDS dataset {name!r} is not in the data directory {root} (no prepared "
            f"dataset in {folder}), and downloading is off. To prepare it, run "
            f"`pip install tensorflow tensorflow-datasets` and `{build}` on a machine with "
            f"internet, then copy {base} to this machine's {base}; or copy the "
            f"{os.path.basename(base)} folder of a ~/tensorflow_datasets prepared in the "
            f"array_record format into {root}."
        )
    if file_format is not None and file_format not in file_adapters.FileFormat.with_random_access():
        return (
            f"TFDS dataset {name!r} in {folder} is stored as {file_format.value}, which "
            f"tfds.data_source cannot read (it needs random access, e.g. array_record). "
            f"Convert it with `tfds convert_format --dataset_version_dir {folder} "
            f"--out_file_format array_record` (needs TensorFlow), or prepare it anew with "
            f"`{build}` on a machine with internet."
        )
    return None


def _default_test_split(name: str) -> str:
    """Returns ``"test"``, or ``"validation"`` for datasets without a test split."""
    base = name.split("/")[0].split(":")[0]
    if base.startswith(_VALIDATION_AS_TEST):
        return "validation"
    return "test"


def _read_records(source: Sequence[Any], indices: Sequence[int], chunk: int = 1024) -> list[Any]:
    """Reads and decodes records, batched through ``__getitems__`` when possible.

    Batched reads are much faster on ArrayRecord files. The source returned
    inside ``tfds.testing.mock_data`` has a broken ``__getitems__`` (its mock does
    not bind ``self``), so a ``TypeError`` falls back to one read per record.
    """
    indices = list(indices)
    get_many = getattr(source, "__getitems__", None)
    if get_many is not None and indices:
        try:
            out: list[Any] = []
            for start in range(0, len(indices), chunk):
                out.extend(get_many(indices[start : start + chunk]))
            return out
        except TypeError:
            pass
    return [source[i] for i in indices]


def _read_split(
    source: Sequence[Any], max_examples: int | None, image_size: int | None, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes one TFDS split into ``(float32 NHWC images in [0, 1], int32 labels)``."""
    n = len(source) if max_examples is None else min(max_examples, len(source))
    records = _read_records(source, range(n))
    images = []
    for record in records:
        image = np.asarray(record["image"])
        if image.ndim == 2:
            image = image[..., None]
        if image_size is not None:
            image = _resize_and_center_crop(image, image_size)
        images.append(image)
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(
            f"Images of {name!r} have {len(shapes)} different shapes (e.g. "
            f"{sorted(shapes)[:3]}); pass image_size=... to resize them."
        )
    labels = np.asarray([int(record["label"]) for record in records], dtype=np.int32)
    if not images:
        return np.zeros((0, 0, 0, 0), np.float32), labels
    x = np.stack(images)
    x = x.astype(np.float32) / (255.0 if x.dtype == np.uint8 else 1.0)
    return x, labels


def _resize_and_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes so the shorter side is ``size`` (bilinear), then centre-crops a square.

    Returns an array of shape ``(size, size, C)`` with ``image``'s dtype.
    """
    from PIL import Image

    height, width, channels = image.shape
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_h, new_w) != (height, width):
        planes = image[..., 0] if channels == 1 else image
        resized = Image.fromarray(planes).resize((new_w, new_h), Image.BILINEAR)
        image = np.asarray(resized).reshape(new_h, new_w, channels)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return image[top : top + size, left : left + size]


def load(name: str, *, data_dir: str | os.PathLike | None = None, **kwargs: Any) -> Dataset:
    """Loads a dataset by name.

    ``"digits"`` and ``"mnist1d"`` are built offline (:func:`load_digits`,
    :func:`load_mnist1d`); every other name goes to :func:`load_tfds`. ``kwargs``
    are passed to the chosen loader.

    Args:
      name: ``"digits"``, ``"mnist1d"`` or a TFDS name (e.g. ``"cifar10"``).
      data_dir: A local TFDS data directory holding the prepared dataset. A TFDS
        dataset is then read from it and never downloaded (``download`` is forced
        off, so a missing dataset raises :class:`DataNotFoundError`); the offline
        datasets read no files and ignore it.
      **kwargs: options of the chosen loader.

    Returns:
      The :class:`Dataset`.
    """
    key = name.lower().replace("-", "_")
    if key == "digits":
        return load_digits(**kwargs)
    if key == "mnist1d":
        return load_mnist1d(**kwargs)
    if data_dir is not None:
        kwargs = {**kwargs, "data_dir": data_dir, "download": False}
    return load_tfds(name, **kwargs)


# ---------------------------------------------------------------------------
# Batching and augmentation.
# ---------------------------------------------------------------------------


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    rng: np.random.Generator | None = None,
    shuffle: bool = True,
    augment: bool = False,
    flip: bool = False,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``(x_batch, y_batch)`` numpy batches covering one epoch.

    Without ``drop_last`` every example appears exactly once (the last batch may
    be smaller); with it, a trailing partial batch is skipped, which keeps batch
    shapes constant for ``jax.jit``.

    Args:
      x: Inputs, shape ``(N, ...)``.
      y: Labels, shape ``(N,)``.
      batch_size: Examples per batch.
      rng: Source of randomness for shuffling and augmentation. ``None`` uses
        ``np.random.default_rng(0)``, so batches are reproducible by default; pass
        one generator across epochs to get a different order each epoch.
      shuffle: Whether to visit examples in a random order.
      augment: Random translation ("random crop with zero padding") along every
        spatial axis of inputs with shape ``(N, *spatial, C)``: padding is 4 when
        the smallest spatial size is >= 32 and 1 otherwise. Shapes are unchanged.
      flip: With ``augment``, also flip 2D images horizontally with probability
        1/2 (meant for natural images, not digits).
      drop_last: Skip a trailing partial batch.

    Returns:
      An iterator over batches; batches are fresh arrays, never views of ``x``.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}.")
    rng = np.random.default_rng(0) if rng is None else rng
    n = len(x)
    order = rng.permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        xb, yb = x[idx], y[idx]
        if augment:
            xb = augment_batch(xb, rng, flip=flip)
        yield xb, yb


def augment_batch(x: np.ndarray, rng: np.random.Generator, *, flip: bool = False) -> np.ndarray:
    """Randomly translates (and optionally flips) each example; see :func:`batches`.

    Inputs with fewer than one spatial axis (``x.ndim < 3``) are returned as is.

    Args:
      x: a batch ``(N, ..., C)``.
      rng: the generator of the offsets (and flips).
      flip: also flip 2D images horizontally with probability 1/2.

    Returns:
      An augmented copy of ``x`` with the same shape and dtype.
    """
    if x.ndim < 3 or len(x) == 0:
        return x
    spatial_axes = tuple(range(1, x.ndim - 1))
    pad = 4 if min(x.shape[a] for a in spatial_axes) >= 32 else 1
    widths = [(0, 0)] + [(pad, pad)] * len(spatial_axes) + [(0, 0)]
    out = np.pad(x, widths)
    for axis in spatial_axes:
        size = x.shape[axis]
        offsets = rng.integers(0, 2 * pad + 1, size=len(x))
        index = offsets[:, None] + np.arange(size)[None, :]
        shape = [len(x)] + [1] * (x.ndim - 1)
        shape[axis] = size
        out = np.take_along_axis(out, index.reshape(shape), axis=axis)
    if flip and len(spatial_axes) == 2:
        flipped = rng.random(len(x)) < 0.5
        out[flipped] = out[flipped][:, :, ::-1]
    return out
