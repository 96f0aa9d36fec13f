"""A byte-level text corpus that every machine has: the Python standard library's source.

A fixed list of modules (present in CPython 3.10 to 3.13) is read from the running
interpreter's ``stdlib`` directory; every fifth file of the sorted list is held out
as the test split, so test text comes from files the model never saw. Bytes are the
tokens (vocabulary 256), so there is no tokenizer to download.
"""

from __future__ import annotations

import dataclasses
import os
import sysconfig

import numpy as np

__all__ = ["STDLIB_FILES", "ByteCorpus", "load_stdlib_corpus", "sample_windows"]

#: The modules read, relative to the standard library directory (sorted).
STDLIB_FILES: tuple[str, ...] = tuple(
    sorted(
        """abc.py argparse.py ast.py bisect.py calendar.py codecs.py collections/__init__.py
        configparser.py contextlib.py copy.py csv.py dataclasses.py difflib.py enum.py
        fractions.py functools.py getopt.py gettext.py glob.py heapq.py hmac.py inspect.py
        ipaddress.py json/decoder.py json/encoder.py locale.py logging/__init__.py
        mimetypes.py ntpath.py numbers.py operator.py optparse.py os.py pickle.py
        platform.py plistlib.py posixpath.py pprint.py queue.py random.py reprlib.py
        sched.py secrets.py selectors.py shlex.py shutil.py smtplib.py socket.py stat.py
        statistics.py string.py subprocess.py tarfile.py tempfile.py textwrap.py
        threading.py timeit.py token.py tokenize.py traceback.py types.py typing.py uuid.py
        warnings.py weakref.py webbrowser.py""".split()
    )
)


@dataclasses.dataclass(frozen=True, eq=False)
class ByteCorpus:
    """Train and test bytes of a corpus, split by file.

    Attributes:
      train, test: ``uint8`` arrays, the files of each split concatenated.
      train_files, test_files: the files of each split.
    """

    train: np.ndarray
    test: np.ndarray
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]


def load_stdlib_corpus(
    files: tuple[str, ...] = STDLIB_FILES, *, test_every: int = 5, root: str | None = None
) -> ByteCorpus:
    """Reads the corpus from the standard library of the running interpreter.

    Args:
      files: the files, relative to ``root``.
      test_every: every ``test_every``-th file (from the first) is a test file.
      root: the standard library directory; None for ``sysconfig``'s ``stdlib`` path.

    Returns:
      The :class:`ByteCorpus`.

    Raises:
      FileNotFoundError: naming a file that this Python does not ship (pass ``files``
        without it).

    >>> corpus = load_stdlib_corpus()
    >>> corpus.test_files[:2], corpus.train.dtype, len(corpus.train) > 1_000_000
    (('abc.py', 'calendar.py'), dtype('uint8'), True)
    """
    root = sysconfig.get_paths()["stdlib"] if root is None else root
    chunks: dict[bool, list[np.ndarray]] = {True: [], False: []}
    names: dict[bool, list[str]] = {True: [], False: []}
    for i, name in enumerate(files):
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"The standard library at {root} has no {name}; pass `files` without it."
            )
        with open(path, "rb") as f:
            chunks[i % test_every == 0].append(np.frombuffer(f.read(), np.uint8))
        names[i % test_every == 0].append(name)
    return ByteCorpus(
        np.concatenate(chunks[False]),
        np.concatenate(chunks[True]),
        tuple(names[False]),
        tuple(names[True]),
    )


def sample_windows(data: np.ndarray, count: int, length: int, rng: np.random.Generator):
    """Draws ``count`` windows of ``length + 1`` bytes: inputs and next-byte targets.

    Args:
      data: the bytes.
      count: how many windows.
      length: the model's input length.
      rng: where the window starts come from.

    Returns:
      ``(inputs, targets)``, ``int32`` arrays ``(count, length)``; targets are the
      inputs shifted by one byte.

    >>> x, y = sample_windows(np.arange(10, dtype=np.uint8), 2, 4, np.random.default_rng(0))
    >>> bool((x[:, 1:] == y[:, :-1]).all()), x.shape
    (True, (2, 4))
    """
    starts = rng.integers(0, len(data) - length - 1, size=count)
    windows = np.stack([data[s : s + length + 1] for s in starts]).astype(np.int32)
    return windows[:, :-1], windows[:, 1:]
