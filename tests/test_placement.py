"""Dtypes, sharding and non-finite sources."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpiat_jax

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


class Net(nn.Module):
    widths: tuple = (16, 16)
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.widths[0], (3, 3), param_dtype=self.param_dtype)(x)
        x = nn.BatchNorm(use_running_average=not train, param_dtype=self.param_dtype)(x)
        for w in self.widths[1:]:
            x = nn.Conv(w, (3, 3), param_dtype=self.param_dtype)(nn.relu(x))
        return nn.Dense(10, param_dtype=self.param_dtype)(x.mean((1, 2)))


X = jnp.ones((1, 8, 8, 3))


@pytest.mark.parametrize(
    ("src_dtype", "dst_dtype"),
    # every dtype on both sides: float32 -> bfloat16 -> float16 -> float32, and identity
    [(a, DTYPES[(i + 1) % 3]) for i, a in enumerate(DTYPES)] + [(jnp.float32, jnp.float32)],
)
def test_output_has_target_dtypes(src_dtype, dst_dtype):
    src, dst = Net((16, 16), src_dtype), Net((8, 16, 32), dst_dtype)
    variables = src.init(jax.random.key(0), X)
    out = dpiat_jax.transfer(variables, src, dst, jax.random.key(1), sample_input=X)
    fresh = dst.init(jax.random.key(1), X)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, fresh)
    # Source values arrive cast to the target dtype (the first conv keeps its full shape).
    expected = np.asarray(variables["params"]["Conv_0"]["kernel"][..., 4:12].astype(dst_dtype))
    got = np.asarray(out["params"]["Conv_0"]["kernel"])
    np.testing.assert_array_equal(got, expected)


def _nan_source():
    src, dst = Net((16, 16)), Net((16, 32))
    variables = src.init(jax.random.key(0), X)
    kernel = variables["params"]["Conv_1"]["kernel"]
    variables["params"]["Conv_1"]["kernel"] = kernel.at[0, 0, 0, 0].set(jnp.inf)
    return variables, src, dst


def test_nonfinite_source_warns_by_default():
    variables, src, dst = _nan_source()
    with pytest.warns(RuntimeWarning, match="params/Conv_1/kernel"):
        dpiat_jax.transfer(variables, src, dst, jax.random.key(1), sample_input=X)


def test_nonfinite_source_raises_or_is_ignored_on_request():
    variables, src, dst = _nan_source()
    with pytest.raises(FloatingPointError, match="on_nonfinite"):
        dpiat_jax.transfer(
            variables, src, dst, jax.random.key(1), sample_input=X, on_nonfinite="raise"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dpiat_jax.transfer(
            variables, src, dst, jax.random.key(1), sample_input=X, on_nonfinite="ignore"
        )
    with pytest.raises(ValueError, match="on_nonfinite"):
        dpiat_jax.transfer(variables, src, dst, jax.random.key(1), on_nonfinite="maybe")


def test_out_shardings_single_device():
    src, dst = Net((16, 16)), Net((16, 32))
    variables = src.init(jax.random.key(0), X)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    out = dpiat_jax.transfer(
        variables, src, dst, jax.random.key(1), sample_input=X, out_shardings=sharding
    )
    assert all(a.sharding == sharding for a in jax.tree.leaves(out))
    with pytest.raises(ValueError, match="out_shardings"):
        dpiat_jax.transfer(
            variables, src, dst, jax.random.key(1), sample_input=X, out_shardings={"x": sharding}
        )


SHARDED = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import flax.linen as nn
    import dpiat_jax

    class MLP(nn.Module):
        widths: tuple
        @nn.compact
        def __call__(self, x):
            for w in self.widths:
                x = nn.relu(nn.Dense(w)(x))
            return nn.Dense(8)(x)

    assert len(jax.devices()) == 8
    mesh = Mesh(np.array(jax.devices()), ("x",))
    src, dst = MLP((64, 64)), MLP((128, 64, 32))
    x = jnp.ones((1, 16))
    variables = src.init(jax.random.key(0), x)
    columns = NamedSharding(mesh, P(None, "x"))
    sharded = jax.tree.map(
        lambda a: jax.device_put(a, columns if a.ndim == 2 else NamedSharding(mesh, P())),
        variables,
    )
    rows = NamedSharding(mesh, P("x"))
    shardings = jax.tree.map(
        lambda a: rows if a.shape[0] % 8 == 0 else NamedSharding(mesh, P()),
        jax.eval_shape(dst.init, jax.random.key(1), x),
    )
    out = dpiat_jax.transfer(sharded, src, dst, jax.random.key(1), sample_input=x,
                             out_shardings=shardings)
    plain = dpiat_jax.transfer(variables, src, dst, jax.random.key(1), sample_input=x)
    for a, s in zip(jax.tree.leaves(out), jax.tree.leaves(shardings)):
        assert a.sharding == s, (a.sharding, s)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(plain)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    print("OK")
    """
)


def test_sharded_source_and_out_shardings_on_eight_devices():
    result = subprocess.run(
        [sys.executable, "-c", SHARDED], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")
