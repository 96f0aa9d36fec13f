"""Writes the Colab notebooks of this folder from the cells below.

The notebooks are generated so that their code stays reviewable as plain Python: edit
the cells here, then run ``python colabs/build_notebooks.py`` and commit both this file and
the ``.ipynb`` files. The notebooks are written without outputs and with
``execution_count`` null; ``python colabs/build_notebooks.py --check`` exits with status 1
when a committed notebook differs from what this script writes (the test suite checks
the same).

Every notebook reads ``DPIAT_SMOKE``: set to 1, it runs offline on scikit-learn's digits
with tiny models and a few steps (what ``tests/test_notebooks.py`` executes).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

# A code cell's source; markdown cells are strings starting with "md:".
Cell = str


def md(text: str) -> Cell:
    return "md:" + textwrap.dedent(text).strip("\n")


def code(text: str) -> Cell:
    return textwrap.dedent(text).strip("\n")


# ---------------------------------------------------------------------------
# Cells shared by every notebook.
# ---------------------------------------------------------------------------

INSTALL = code(
    """
    # Installs dpiat_jax with its [experiments] extra (datasets, training, plots) unless it
    # is importable already. From a copy of the repository first: this notebook's parent
    # folder when it runs from colabs/, else DPIAT_JAX_SOURCE (on Colab, upload or clone
    # the repository there); else from DPIAT_JAX_GIT, a git URL you set
    # (e.g. "https://github.com/YOUR_NAME/dpiat_jax.git").
    import importlib.util
    import os
    import sys

    DPIAT_JAX_SOURCE = os.environ.get("DPIAT_JAX_SOURCE", "/content/dpiat_jax")
    DPIAT_JAX_GIT = os.environ.get("DPIAT_JAX_GIT", "")
    NEEDED = ("dpiat_jax", "optax", "orbax.checkpoint", "matplotlib", "sklearn")
    if not all(importlib.util.find_spec(name.split(".")[0]) for name in NEEDED):
        checkouts = [
            os.path.abspath(folder)
            for folder in ("..", DPIAT_JAX_SOURCE)
            if os.path.isfile(os.path.join(folder, "pyproject.toml"))
        ]
        if checkouts:
            CHECKOUT = checkouts[0]
            %pip install --quiet -e "{CHECKOUT}[experiments]"
            sys.path.insert(0, CHECKOUT)  # importable without restarting the kernel
        elif DPIAT_JAX_GIT:
            %pip install --quiet "dpiat_jax[experiments] @ git+{DPIAT_JAX_GIT}"
        else:
            raise RuntimeError(
                "dpiat_jax is not installed and no copy of the repository was found in .. "
                f"or {DPIAT_JAX_SOURCE}: upload or clone it there, or set DPIAT_JAX_GIT to "
                "its git URL, and run this cell again."
            )
    """
)


ENVIRONMENT = code(
    """
    # DPIAT_SMOKE=1: offline digits, tiny models, a few steps (the test suite's setting).
    SMOKE = os.environ.get("DPIAT_SMOKE", "0") not in ("", "0")
    BACKEND = jax.default_backend()  # "tpu", "gpu" or "cpu"
    print(f"JAX {jax.__version__}, dpiat_jax {dj.__version__}, backend {BACKEND!r}")
    print("devices:", jax.devices())
    if SMOKE:
        print("smoke mode: offline digits, tiny models, a few steps (numbers not meaningful)")
    """
)


def setup(imports: str) -> Cell:
    """The notebook's imports (sorted as ruff's isort wants them), the smoke switch and
    the accelerator in use."""
    return code(imports) + "\n\n" + ENVIRONMENT


RUNS_ANYWHERE = md(
    """
    Runs top to bottom on a Colab TPU, GPU or CPU runtime (*Runtime > Change runtime type*);
    the first cell installs `dpiat_jax` when it is missing, and the sizes adapt to the backend
    found.
    With the environment variable `DPIAT_SMOKE=1` the notebook runs offline on
    scikit-learn's 8x8 digits with tiny models and a few steps, in about a minute on a CPU
    (that is what the test suite runs).
    """
)[3:]


def colab_intro(title: str, body: str) -> Cell:
    return "md:" + f"# {title}\n\n{textwrap.dedent(body).strip()}\n\n{RUNS_ANYWHERE}"


# ---------------------------------------------------------------------------
# quickstart.ipynb
# ---------------------------------------------------------------------------

QUICKSTART = [
    colab_intro(
        "dpiat_jax quickstart: start a new architecture from a trained one",
        """
        `dpiat_jax.transfer` initialises a Flax network from the trained parameters of a
        network of a *different* architecture (deeper, wider, another family), in
        milliseconds and without data. This notebook trains a small CIFAR ResNet on
        CIFAR-10 (read through TensorFlow Datasets, without TensorFlow), transfers it into a
        deeper and wider ResNet, and trains that target from the transfer and from a random
        initialisation, to compare the two learning curves.
        """,
    ),
    INSTALL,
    setup(
        """
        import os
        import time

        import jax
        import jax.numpy as jnp
        import matplotlib.pyplot as plt

        import dpiat_jax as dj
        from dpiat_jax.experiments import data, train
        from dpiat_jax.models import CifarResNet
        """
    ),
    md(
        """
        ## Settings

        One preset per setting: the smoke test, a Colab CPU runtime (a CIFAR-10 subset and
        narrow networks) and an accelerator (all of CIFAR-10, ResNet-20 into a ResNet-32 of
        twice the width).
        """
    ),
    code(
        """
        PRESETS = {
            "smoke": dict(
                dataset="digits",
                n_train=256,
                n_test=128,
                batch=32,
                augment=False,
                src=dict(depth=8, base_channels=4),
                dst=dict(depth=14, base_channels=4, width=2),
                src_epochs=10,
                dst_epochs=2,
                dst_lr=0.05,
            ),
            "cpu": dict(
                dataset="cifar10",
                n_train=10_000,
                n_test=2_000,
                batch=128,
                augment=True,
                src=dict(depth=14, base_channels=8),
                dst=dict(depth=20, base_channels=8, width=2),
                src_epochs=6,
                dst_epochs=2,
                dst_lr=0.05,
            ),
            "accelerator": dict(
                dataset="cifar10",
                n_train=None,
                n_test=None,
                batch=128,
                augment=True,
                src=dict(depth=20),
                dst=dict(depth=32, width=2),
                src_epochs=15,
                dst_epochs=4,
                dst_lr=0.1,
            ),
        }
        PRESET = "smoke" if SMOKE else ("cpu" if BACKEND == "cpu" else "accelerator")
        S = PRESETS[PRESET]
        print(f"preset {PRESET!r}: {S}")
        """
    ),
    md(
        """
        ## Data

        `dpiat_jax.experiments.data.load("cifar10")` reads CIFAR-10 through
        `tfds.data_source` (it is downloaded and prepared on first use) into numpy arrays:
        float32 NHWC images in [0, 1] and int32 labels. The smoke setting uses the offline
        digits instead.
        """
    ),
    code(
        """
        if S["dataset"] == "digits":
            ds = data.load("digits")
        else:
            ds = data.load(S["dataset"], max_examples=S["n_train"])
        ds = ds.take(S["n_train"], S["n_test"])
        x0 = jnp.asarray(ds.x_train[:2])  # an example batch: the models' input shape
        print(f"{ds.name}: {ds.num_train} train / {ds.num_test} test, inputs {ds.input_shape}")
        """
    ),
    md(
        """
        ## Two architectures

        Any two `flax.linen` modules work; here both come from the model zoo
        `dpiat_jax.models`: the source is a shallow CIFAR ResNet, the target a deeper one
        with twice the channels.
        """
    ),
    code(
        """
        source = CifarResNet(num_classes=ds.num_classes, **S["src"])
        target = CifarResNet(num_classes=ds.num_classes, **S["dst"])


        def num_params(variables):
            return sum(x.size for x in jax.tree.leaves(variables["params"]))


        src_vars = jax.jit(source.init)(jax.random.key(0), x0)
        print(f"source: ResNet-{source.depth}, {num_params(src_vars):,} parameters")
        print(f"target: ResNet-{target.depth} x{target.width} width")
        """
    ),
    md(
        """
        ## Train the source

        `dpiat_jax.experiments.train.fit` is a plain optax loop (SGD with momentum, cosine
        schedule); any training code works, the transfer only needs the trained variables.
        """
    ),
    code(
        """
        steps_per_epoch = ds.num_train // S["batch"]
        src_steps = S["src_epochs"] * steps_per_epoch
        src_tx = train.make_optimizer("sgd", 0.1, src_steps, weight_decay=5e-4)
        start = time.perf_counter()
        src_vars, history = train.fit(
            source,
            src_vars,
            ds,
            epochs=S["src_epochs"],
            batch_size=S["batch"],
            tx=src_tx,
            augment=S["augment"],
            flip=S["augment"],
            progress=not SMOKE,
            eval_every_epoch=False,
        )
        src_accuracy = history.final.test_accuracy
        print(f"source test accuracy {src_accuracy:.3f} ({time.perf_counter() - start:.0f}s)")
        """
    ),
    md(
        """
        ## Transfer

        `dj.match` tells what the transfer moves: every (source layer -> target layer)
        pair with its shape score, and the target's coverage. `report.plot()` draws the
        alignment. `dj.transfer` returns the target's variables (`params` and
        `batch_stats`), with exactly the structure of `target.init`; positions the source
        does not supply keep the fresh initialisation drawn from `rng`.
        """
    ),
    code(
        """
        rng = jax.random.key(1)
        report = dj.match(src_vars, source, target, rng, sample_input=x0)
        print(report)
        report.plot()
        """
    ),
    code(
        """
        start = time.perf_counter()
        transferred = dj.transfer(src_vars, source, target, rng, sample_input=x0)
        print(f"transfer took {time.perf_counter() - start:.2f}s")
        random_init = target.init(rng, x0)  # the same fresh init, nothing moved
        assert jax.tree.structure(transferred) == jax.tree.structure(random_init)
        """
    ),
    md(
        """
        ## Train the target from both starts

        Same optimiser, data order and seed; only the initialisation differs. The test
        accuracy is measured before training and after every epoch.
        """
    ),
    code(
        """
        dst_steps = S["dst_epochs"] * steps_per_epoch
        # One optimiser object for both runs, so that the training step compiles once.
        dst_tx = train.make_optimizer("sgd", S["dst_lr"], dst_steps, weight_decay=5e-4)
        curves = {}
        for name, variables in [("DPIAT transfer", transferred), ("random init", random_init)]:
            start = time.perf_counter()
            state = train.create_train_state(target, variables, dst_tx)
            before = train.evaluate(state, ds.x_test, ds.y_test)["accuracy"]
            _, history = train.fit(
                target,
                variables,
                ds,
                epochs=S["dst_epochs"],
                batch_size=S["batch"],
                tx=dst_tx,
                augment=S["augment"],
                flip=S["augment"],
                progress=not SMOKE,
            )
            curves[name] = [before] + [r.test_accuracy for r in history]
            print(
                f"{name:>15}: test accuracy {before:.3f} before training, "
                f"{curves[name][-1]:.3f} after {S['dst_epochs']} epoch(s) "
                f"({time.perf_counter() - start:.0f}s)"
            )
        """
    ),
    code(
        """
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, accuracy in curves.items():
            ax.plot(range(len(accuracy)), accuracy, "o-", label=name)
        ax.axhline(src_accuracy, color="gray", ls="--", lw=0.8, label="trained source")
        ax.set_xlabel("epochs of target training")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"ResNet-{source.depth} -> ResNet-{target.depth} x{target.width} on {ds.name}")
        ax.grid(alpha=0.3)
        ax.legend()
        plt.show()
        ratio = curves["DPIAT transfer"][-1] / max(curves["random init"][-1], 1e-9)
        print(f"accuracy ratio transfer / random after {S['dst_epochs']} epoch(s): {ratio:.2f}x")
        """
    ),
    md(
        """
        ## Next

        * `choose_a_source.ipynb`: rank a zoo of trained models to pick the source.
        * `nas_with_transfer.ipynb`: an architecture search whose children start from
          their parents.
        * `flax_training_loop.ipynb`: the transfer in your own Flax/optax training loop.
        * On checkpoints, from a shell: `dpiat-jax transfer --src CKPT --src-def
          dpiat_jax.models:CifarResNet --src-kwargs '{"depth": 20}' --dst-def ... --out
          NEW_CKPT` (also `dpiat-jax match` and `dpiat-jax rank`).
        """
    ),
]

# ---------------------------------------------------------------------------
# choose_a_source.ipynb
# ---------------------------------------------------------------------------

CHOOSE_A_SOURCE = [
    colab_intro(
        "Choose a source: rank a model zoo by DPIAT similarity",
        """
        Which trained model should a new architecture start from? DPIAT's similarity,
        `score(source, target) / score(target, target)`, comes from the same alignment as
        the transfer and needs no training and no data: 1.0 when the source covers the
        target, towards 0 as the architectures diverge. In the published evaluation its
        Spearman correlation with the accuracy gain of the transfer was 0.81.

        This notebook trains a small zoo of different architectures, ranks them for one
        target with `dpiat_jax.rank_sources`, then checks the ranking with short training
        runs of the target from each source (and from a random init).
        """,
    ),
    INSTALL,
    setup(
        """
        import os
        import time

        import jax
        import jax.numpy as jnp
        import matplotlib.pyplot as plt
        from scipy import stats

        import dpiat_jax as dj
        from dpiat_jax.experiments import data, train
        from dpiat_jax.models import MLP, VGG, CifarResNet
        """
    ),
    code(
        """
        if SMOKE:
            DATASET, N_TRAIN, N_TEST, BATCH = "digits", 256, 128, 32
            SRC_EPOCHS, DST_EPOCHS, C = 6, 1, 4  # C: base channels of the convnets
        elif BACKEND == "cpu":
            DATASET, N_TRAIN, N_TEST, BATCH = "cifar10", 10_000, 2_000, 128
            SRC_EPOCHS, DST_EPOCHS, C = 4, 1, 8
        else:
            DATASET, N_TRAIN, N_TEST, BATCH = "cifar10", None, None, 128
            SRC_EPOCHS, DST_EPOCHS, C = 10, 2, 16

        if DATASET == "digits":
            ds = data.load("digits").take(N_TRAIN, N_TEST)
        else:
            ds = data.load(DATASET, max_examples=N_TRAIN).take(N_TRAIN, N_TEST)
        x0 = jnp.asarray(ds.x_train[:2])
        K = ds.num_classes
        print(f"{ds.name}: {ds.num_train} train / {ds.num_test} test, inputs {ds.input_shape}")
        """
    ),
    md(
        """
        ## A zoo of trained sources

        Residual networks of several depths and widths, a plain VGG-style network and an
        MLP, each trained briefly on the same data.
        """
    ),
    code(
        """
        ZOO = {
            "ResNet-8": CifarResNet(depth=8, base_channels=C, num_classes=K),
            "ResNet-14": CifarResNet(depth=14, base_channels=C, num_classes=K),
            "ResNet-8 x2": CifarResNet(depth=8, width=2, base_channels=C, num_classes=K),
            "VGG": VGG(cfg=(2 * C, "M", 4 * C, "M", 8 * C), num_classes=K),
            "MLP": MLP(hidden_sizes=(16 * C, 16 * C), num_classes=K),
        }
        if SMOKE:
            del ZOO["ResNet-14"]  # keeps the smoke run short

        steps = SRC_EPOCHS * (ds.num_train // BATCH)
        trained = {}
        for name, module in ZOO.items():
            start = time.perf_counter()
            variables = jax.jit(module.init)(jax.random.key(0), x0)
            variables, history = train.fit(
                module,
                variables,
                ds,
                epochs=SRC_EPOCHS,
                batch_size=BATCH,
                tx=train.make_optimizer("sgd", 0.05, steps),
                progress=False,
                eval_every_epoch=False,
            )
            trained[name] = variables
            print(
                f"{name:>12}: test accuracy {history.final.test_accuracy:.3f} "
                f"({time.perf_counter() - start:.0f}s)"
            )
        """
    ),
    md(
        """
        ## Rank the zoo for a target

        `rank_sources` takes `(module, variables)` pairs (or spec trees) and the target (a
        bare module is enough: its shapes come from an abstract init) and returns
        `(index, similarity)` pairs, best first. All alignments run in one batched call.
        From a shell, the same on checkpoints: `dpiat-jax rank --src CKPT_A --src-def
        module:Class ... --src CKPT_B --src-def ... --dst-def module:Class`.
        """
    ),
    code(
        """
        target = CifarResNet(depth=14 if SMOKE else 20, width=2, base_channels=C, num_classes=K)
        names = list(trained)
        start = time.perf_counter()
        ranking = dj.rank_sources([(ZOO[n], trained[n]) for n in names], target, sample_input=x0)
        print(f"ranked in {time.perf_counter() - start:.2f}s, best first:")
        similarity = {}
        for place, (i, sim) in enumerate(ranking, start=1):
            similarity[names[i]] = sim
            print(f"  {place}. {names[i]:>12}  similarity {sim:.3f}")
        """
    ),
    md(
        """
        ## Check the ranking by training

        The target is trained for a short budget from each source's transfer and from a
        random init (same optimiser, data order and fresh init for all). A good ranking
        puts the sources whose transfer trains best first.
        """
    ),
    code(
        """
        rng = jax.random.key(1)
        dst_tx = train.make_optimizer("sgd", 0.05, DST_EPOCHS * (ds.num_train // BATCH))
        starts = {n: dj.transfer(trained[n], ZOO[n], target, rng, sample_input=x0) for n in names}
        starts["random init"] = jax.jit(target.init)(rng, x0)
        accuracy = {}
        for name, variables in starts.items():
            _, history = train.fit(
                target,
                variables,
                ds,
                epochs=DST_EPOCHS,
                batch_size=BATCH,
                tx=dst_tx,
                progress=False,
                eval_every_epoch=False,
            )
            accuracy[name] = history.final.test_accuracy
            sim = similarity.get(name)
            label = "" if sim is None else f"similarity {sim:.3f}"
            print(f"{name:>12}: {label:>16}  accuracy {accuracy[name]:.3f}")
        """
    ),
    code(
        """
        rho = stats.spearmanr([similarity[n] for n in names], [accuracy[n] for n in names])
        print(
            f"Spearman correlation of similarity and accuracy over {len(names)} sources: "
            f"{rho.statistic:.2f}"
        )

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter([similarity[n] for n in names], [accuracy[n] for n in names])
        for n in names:
            ax.annotate(n, (similarity[n], accuracy[n]), textcoords="offset points", xytext=(4, 4))
        ax.axhline(accuracy["random init"], color="gray", ls="--", label="random init")
        ax.set_xlabel("DPIAT similarity to the target")
        ax.set_ylabel(f"test accuracy after {DST_EPOCHS} epoch(s)")
        ax.set_title(f"Sources for ResNet-{target.depth} x{target.width} on {ds.name}")
        ax.grid(alpha=0.3)
        ax.legend()
        plt.show()
        """
    ),
]

# ---------------------------------------------------------------------------
# nas_with_transfer.ipynb
# ---------------------------------------------------------------------------

NAS = [
    colab_intro(
        "Architecture search with transfer: every child starts from its parent",
        """
        In an evolutionary architecture search most of the compute goes into training
        children from scratch. With `dpiat_jax.transfer`, a child made by mutating its
        parent (a layer more or less, wider or narrower stages) starts from the parent's
        trained parameters instead, even though the shapes differ, so a short training
        budget goes much further.

        This notebook runs a small regularised evolution (Real et al., 2019) over VGG-style
        configurations from the model zoo (`dpiat_jax.models.VGG`), once with every child
        initialised from its parent by DPIAT and once from random inits, with the same
        mutations, budget and seeds, and compares the best accuracy found.
        """,
    ),
    INSTALL,
    setup(
        """
        import collections
        import os
        import random
        import time

        import jax
        import jax.numpy as jnp
        import matplotlib.pyplot as plt
        import numpy as np

        import dpiat_jax as dj
        from dpiat_jax.experiments import data, train
        from dpiat_jax.models import VGG, VGG_CONFIGS
        """
    ),
    code(
        """
        if SMOKE:
            DATASET, N_TRAIN, N_VAL, N_TEST, BATCH = "digits", 256, 128, 128, 32
            POPULATION, TOURNAMENT, CHILDREN, EPOCHS = 2, 2, 3, 3
            START = ((8,), (16,))  # conv widths per stage; a 2x2 max pool between stages
            MAX_WIDTH = 32
        elif BACKEND == "cpu":
            DATASET, N_TRAIN, N_VAL, N_TEST, BATCH = "cifar10", 8_000, 2_000, 2_000, 128
            POPULATION, TOURNAMENT, CHILDREN, EPOCHS = 4, 2, 8, 1
            START = ((16,), (32,), (64,))
            MAX_WIDTH = 128
        else:
            DATASET, N_TRAIN, N_VAL, N_TEST, BATCH = "cifar10", 40_000, 10_000, 10_000, 128
            POPULATION, TOURNAMENT, CHILDREN, EPOCHS = 6, 3, 20, 1
            START = tuple((w,) for w in VGG_CONFIGS["vgg_small"] if w != "M")  # 32, 64, 128
            MAX_WIDTH = 512

        if DATASET == "digits":
            full = data.load("digits")
        else:
            full = data.load(DATASET, max_examples=N_TRAIN + N_VAL)
        # Fitness is measured on a validation split held out of the training data.
        ds = data.Dataset(
            x_train=full.x_train[:N_TRAIN],
            y_train=full.y_train[:N_TRAIN],
            x_test=full.x_train[N_TRAIN : N_TRAIN + N_VAL],
            y_test=full.y_train[N_TRAIN : N_TRAIN + N_VAL],
            num_classes=full.num_classes,
            name=full.name,
        )
        x_test, y_test = full.x_test[:N_TEST], full.y_test[:N_TEST]
        x0 = jnp.asarray(ds.x_train[:2])
        print(f"{ds.name}: {ds.num_train} train / {ds.num_test} validation / {len(x_test)} test")
        """
    ),
    md(
        """
        ## Search space and mutations

        A genome is a tuple of stages, each a tuple of 3x3 conv widths; stages are separated
        by 2x2 max pools (the `cfg` of `dpiat_jax.models.VGG`). A mutation deepens a stage
        (repeats one of its convs), makes it shallower, or widens or narrows it.
        """
    ),
    code(
        """
        def to_cfg(genome):
            cfg = []
            for i, stage in enumerate(genome):
                cfg += (["M"] if i else []) + list(stage)
            return tuple(cfg)


        def mutate(genome, rnd):
            genome = [list(stage) for stage in genome]
            s = rnd.randrange(len(genome))
            stage = genome[s]
            choices = ["deeper"]
            if 2 * stage[0] <= MAX_WIDTH:
                choices.append("wider")
            if len(stage) > 1:
                choices.append("shallower")
            if stage[0] >= 8:
                choices.append("narrower")
            kind = rnd.choice(choices)
            if kind == "deeper":
                i = rnd.randrange(len(stage))
                stage.insert(i, stage[i])
            elif kind == "shallower":
                stage.pop(rnd.randrange(len(stage)))
            elif kind == "wider":
                genome[s] = [2 * w for w in stage]
            else:
                genome[s] = [w // 2 for w in stage]
            return tuple(tuple(stage) for stage in genome), f"stage {s + 1} {kind}"


        _models = {}


        def model(genome):
            # One module object per genome, so that a genome met again (in either search)
            # reuses its compiled training step.
            if genome not in _models:
                _models[genome] = VGG(cfg=to_cfg(genome), num_classes=ds.num_classes)
            return _models[genome]


        print(mutate(START, random.Random(0)))
        """
    ),
    md(
        """
        ## Training a candidate

        Every candidate gets the same short budget. One optimiser object serves all of them
        (it does not depend on the architecture), so a training step compiles once per
        architecture.
        """
    ),
    code(
        """
        TX = train.make_optimizer("sgd", 0.05, EPOCHS * (ds.num_train // BATCH))
        Candidate = collections.namedtuple("Candidate", "genome variables accuracy")


        def train_candidate(genome, variables, seed):
            variables, history = train.fit(
                model(genome),
                variables,
                ds,
                epochs=EPOCHS,
                batch_size=BATCH,
                tx=TX,
                seed=seed,
                progress=False,
                eval_every_epoch=False,
            )
            return Candidate(genome, variables, history.final.test_accuracy)


        def random_init(genome, seed):
            return jax.jit(model(genome).init)(jax.random.key(seed), x0)
        """
    ),
    md(
        """
        ## Regularised evolution

        Each cycle picks the best of a random sample of the population as the parent,
        mutates it and trains the child; the child joins the population and the oldest
        member leaves. `use_transfer` decides where the child starts: from its parent's
        trained variables through `dj.transfer` (the parent and the child differ in depth
        and width), or from a random init. Both searches start from the same trained
        initial population and draw the same random numbers.
        """
    ),
    code(
        """
        start = time.perf_counter()
        initial, rnd = [], random.Random(0)
        genome = START
        for i in range(POPULATION):
            initial.append(train_candidate(genome, random_init(genome, i), seed=i))
            genome, _ = mutate(genome, rnd)
        print(f"initial population trained ({time.perf_counter() - start:.0f}s):")
        for c in initial:
            print(f"  {to_cfg(c.genome)}: validation accuracy {c.accuracy:.3f}")


        def evolve(use_transfer, seed=1):
            rnd = random.Random(seed)
            population = collections.deque(initial)
            history = list(initial)
            for cycle in range(CHILDREN):
                parent = max(rnd.sample(list(population), TOURNAMENT), key=lambda c: c.accuracy)
                genome, change = mutate(parent.genome, rnd)
                if use_transfer:
                    variables = dj.transfer(
                        parent.variables,
                        model(parent.genome),
                        model(genome),
                        jax.random.key(100 + cycle),
                        sample_input=x0,
                    )
                else:
                    variables = random_init(genome, 100 + cycle)
                child = train_candidate(genome, variables, seed=100 + cycle)
                population.append(child)
                population.popleft()
                history.append(child)
                print(
                    f"  child {cycle + 1}: {change:<18} {str(to_cfg(genome)):<40} "
                    f"accuracy {child.accuracy:.3f} (parent {parent.accuracy:.3f})"
                )
            return history


        results = {}
        for name, use_transfer in [("DPIAT transfer", True), ("random init", False)]:
            start = time.perf_counter()
            print(f"{name}:")
            results[name] = evolve(use_transfer)
            print(f"  ({time.perf_counter() - start:.0f}s)")
        """
    ),
    code(
        """
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, history in results.items():
            accuracy = [c.accuracy for c in history]
            ax.plot(np.maximum.accumulate(accuracy), "-", label=f"{name}: best so far")
            ax.plot(accuracy, "o", ms=4, alpha=0.5, color=ax.lines[-1].get_color())
        ax.axvline(POPULATION - 0.5, color="gray", ls=":", lw=0.8)
        ax.set_xlabel("candidates trained (initial population, then children)")
        ax.set_ylabel("validation accuracy")
        ax.set_title(f"Regularised evolution on {ds.name}, {EPOCHS} epoch(s) per candidate")
        ax.grid(alpha=0.3)
        ax.legend()
        plt.show()

        for name, history in results.items():
            best = max(history, key=lambda c: c.accuracy)
            state = train.create_train_state(model(best.genome), best.variables, TX)
            test = train.evaluate(state, x_test, y_test)["accuracy"]
            scores = f"validation {best.accuracy:.3f}, test {test:.3f}"
            print(f"{name:>15}: best {to_cfg(best.genome)}, {scores}")
        """
    ),
]

# ---------------------------------------------------------------------------
# flax_training_loop.ipynb
# ---------------------------------------------------------------------------

FLAX_LOOP = [
    colab_intro(
        "dpiat_jax in an ordinary Flax/optax training loop",
        """
        No special training code is needed: `dpiat_jax.transfer` returns an ordinary
        variables dict with exactly the structure of `model.init`, so it replaces the
        random initialisation in any loop. This notebook writes the usual
        `flax.training.train_state.TrainState` loop with optax by hand, trains a small
        source network, saves it with Orbax, and starts a different target network from
        the restored checkpoint: the transfer is one line between `restore` and
        `TrainState.create`.
        """,
    ),
    INSTALL,
    setup(
        """
        import os
        import time
        from collections.abc import Sequence
        from typing import Any

        import flax.linen as nn
        import jax
        import jax.numpy as jnp
        import matplotlib.pyplot as plt
        import numpy as np
        import optax
        import orbax.checkpoint as ocp
        from flax.training import train_state

        import dpiat_jax as dj
        from dpiat_jax.experiments import data
        """
    ),
    code(
        """
        if SMOKE:
            DATASET, N_TRAIN, N_TEST, BATCH, EPOCHS, LR = "digits", 256, 128, 32, 4, 0.05
        elif BACKEND == "cpu":
            DATASET, N_TRAIN, N_TEST, BATCH, EPOCHS, LR = "cifar10", 10_000, 2_000, 128, 3, 0.05
        else:
            DATASET, N_TRAIN, N_TEST, BATCH, EPOCHS, LR = "cifar10", None, None, 128, 5, 0.05

        if DATASET == "digits":
            ds = data.load("digits").take(N_TRAIN, N_TEST)
        else:
            ds = data.load(DATASET, max_examples=N_TRAIN).take(N_TRAIN, N_TEST)
        print(f"{ds.name}: {ds.num_train} train / {ds.num_test} test, inputs {ds.input_shape}")
        """
    ),
    md(
        """
        ## A model of your own

        Any `flax.linen` module works; `dpiat_jax` finds its layers by running it. Here a
        plain convnet with batch norm, defined in the notebook: the source has three stages
        of one conv each, the target three stages of two convs, wider.
        """
    ),
    code(
        """
        class ConvNet(nn.Module):
            stages: Sequence[Sequence[int]] = ((32,), (64,))
            num_classes: int = 10

            @nn.compact
            def __call__(self, x, train: bool = False):
                for i, stage in enumerate(self.stages):
                    if i:
                        x = nn.max_pool(x, (2, 2), strides=(2, 2))
                    for width in stage:
                        x = nn.Conv(width, (3, 3), use_bias=False)(x)
                        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
                        x = nn.relu(x)
                x = jnp.mean(x, axis=(1, 2))
                return nn.Dense(self.num_classes)(x)


        W = 8 if SMOKE else 32
        source = ConvNet(stages=((W,), (2 * W,), (4 * W,)), num_classes=ds.num_classes)
        deeper_wider = ((W, W), (3 * W, 3 * W), (4 * W, 4 * W))
        target = ConvNet(stages=deeper_wider, num_classes=ds.num_classes)
        """
    ),
    md(
        """
        ## The usual loop: TrainState, optax, jit

        Nothing here knows about `dpiat_jax`.
        """
    ),
    code(
        """
        class TrainState(train_state.TrainState):
            batch_stats: Any


        def create_state(model, variables, tx):
            return TrainState.create(
                apply_fn=model.apply,
                params=variables["params"],
                batch_stats=variables["batch_stats"],
                tx=tx,
            )


        @jax.jit
        def train_step(state, x, y):
            def loss_fn(params):
                logits, updates = state.apply_fn(
                    {"params": params, "batch_stats": state.batch_stats},
                    x,
                    train=True,
                    mutable=["batch_stats"],
                )
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
                return loss, updates["batch_stats"]

            (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            state = state.apply_gradients(grads=grads).replace(batch_stats=batch_stats)
            return state, loss


        @jax.jit
        def accuracy_step(state, x, y):
            variables = {"params": state.params, "batch_stats": state.batch_stats}
            logits = state.apply_fn(variables, x, train=False)
            return jnp.sum(jnp.argmax(logits, -1) == y)


        def accuracy(state):
            n = len(ds.x_test) // BATCH * BATCH  # full batches: one compiled shape
            correct = sum(
                int(accuracy_step(state, ds.x_test[i : i + BATCH], ds.y_test[i : i + BATCH]))
                for i in range(0, n, BATCH)
            )
            return correct / n


        def run(state, epochs, seed=0, evals_per_epoch=4):
            rng = np.random.default_rng(seed)
            steps_per_epoch = ds.num_train // BATCH
            every = max(1, steps_per_epoch // evals_per_epoch)
            curve = [(0, accuracy(state))]
            for epoch in range(epochs):
                order = rng.permutation(ds.num_train)
                for i in range(steps_per_epoch):
                    idx = order[i * BATCH : (i + 1) * BATCH]
                    state, loss = train_step(state, ds.x_train[idx], ds.y_train[idx])
                    step = epoch * steps_per_epoch + i + 1
                    if step % every == 0:
                        curve.append((step, accuracy(state)))
            return state, curve


        def make_tx(epochs):
            schedule = optax.cosine_decay_schedule(LR, epochs * (ds.num_train // BATCH))
            return optax.sgd(schedule, momentum=0.9)
        """
    ),
    md(
        """
        ## Train the source and save it with Orbax
        """
    ),
    code(
        """
        x0 = jnp.asarray(ds.x_train[:BATCH])
        start = time.perf_counter()
        src_state = create_state(source, source.init(jax.random.key(0), x0), make_tx(EPOCHS))
        src_state, src_curve = run(src_state, EPOCHS)
        print(f"source accuracy {src_curve[-1][1]:.3f} ({time.perf_counter() - start:.0f}s)")

        CKPT = os.path.abspath("checkpoints/source")  # Orbax wants an absolute path
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(CKPT, src_state, force=True)
        checkpointer.wait_until_finished()
        print("saved", CKPT)
        """
    ),
    md(
        """
        ## Start the target: where the transfer goes

        The usual start is `variables = target.init(rng, x)`. With DPIAT, restore the
        source (here from the checkpoint, as nested dicts: a saved `TrainState` holds
        `params`, `batch_stats`, `opt_state` and `step`; only the model variables are
        passed on), then one call replaces the random init. The result has exactly the
        structure of `target.init`, so `create_state` and `train_step` are unchanged. The
        optimiser starts fresh, as for any new model.
        """
    ),
    code(
        """
        restored = checkpointer.restore(CKPT)  # no target: nested dicts of arrays
        src_variables = {"params": restored["params"], "batch_stats": restored["batch_stats"]}

        rng = jax.random.key(1)
        x = jnp.asarray(ds.x_train[:BATCH])
        random_variables = target.init(rng, x)  # the usual start

        # -- the transfer: one line instead of target.init ------------------------------
        variables = dj.transfer(src_variables, source, target, rng, sample_input=x)
        # --------------------------------------------------------------------------------
        assert jax.tree.structure(variables) == jax.tree.structure(random_variables)

        tx = make_tx(EPOCHS)  # one optimiser object for both runs: one compiled step
        curves = {}
        for name, start_vars in [("DPIAT transfer", variables), ("random init", random_variables)]:
            start = time.perf_counter()
            _, curves[name] = run(create_state(target, start_vars, tx), EPOCHS)
            print(
                f"{name:>15}: accuracy {curves[name][0][1]:.3f} before training, "
                f"{curves[name][-1][1]:.3f} after ({time.perf_counter() - start:.0f}s)"
            )
        """
    ),
    code(
        """
        steps_per_epoch = ds.num_train // BATCH
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, curve in curves.items():
            steps, acc = zip(*curve)
            ax.plot(np.asarray(steps) / steps_per_epoch, acc, "o-", ms=3, label=name)
        ax.set_xlabel("epochs of target training")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"Target ConvNet{target.stages} on {ds.name}")
        ax.grid(alpha=0.3)
        ax.legend()
        plt.show()
        """
    ),
    md(
        """
        ## Notes

        * `dj.transfer` takes the whole variables dict and returns every collection of the
          target's init (`params` and `batch_stats`); pass only `params` to get only
          `params` back.
        * `sample_input` is one example batch; leave it out and an input that reproduces
          the source's shapes is inferred. Modules whose `__call__` needs more arguments
          take `call_kwargs=`.
        * `dj.match(...)` reports what was moved; `dj.similarity(...)` scores a source
          before any transfer.
        * The same from a shell, on the checkpoint saved above (smoke sizes, W = 8), once
          `ConvNet` lives in a module (say `my_module.py` in the working directory):

          ```bash
          dpiat-jax transfer --src checkpoints/source \\
              --src-def my_module:ConvNet --src-kwargs '{"stages": [[8], [16], [32]]}' \\
              --dst-def my_module:ConvNet --dst-kwargs '{"stages": [[8, 8], [24, 24], [32, 32]]}' \\
              --out checkpoints/target
          ```

          `dpiat-jax match` prints the report (`--plot match.png` draws it) and
          `dpiat-jax rank` ranks several source checkpoints for one target.
        """
    ),
]

NOTEBOOKS: dict[str, list[Cell]] = {
    "quickstart.ipynb": QUICKSTART,
    "choose_a_source.ipynb": CHOOSE_A_SOURCE,
    "nas_with_transfer.ipynb": NAS,
    "flax_training_loop.ipynb": FLAX_LOOP,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` (no outputs, execution counts null, stable cell ids)."""
    stem = Path(name).stem.replace("_", "-")
    cells = []
    for i, cell in enumerate(NOTEBOOKS[name]):
        cell_id = f"{stem}-{i:02d}"
        if cell.startswith("md:"):
            cells.append(nbformat.v4.new_markdown_cell(cell[3:], id=cell_id))
        else:
            cells.append(nbformat.v4.new_code_cell(cell, id=cell_id))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {
        "colab": {"provenance": [], "toc_visible": True},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    """The file text of notebook ``name``."""
    return nbformat.writes(build(name)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    parser.add_argument("--out", default=str(HERE), help="folder to write to")
    args = parser.parse_args(argv)
    stale = []
    for name in NOTEBOOKS:
        path = Path(args.out) / name
        text = render(name)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print("wrote", path)
    if stale:
        print(
            f"out of date: {', '.join(stale)}; run python colabs/build_notebooks.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
