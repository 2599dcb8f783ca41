"""The XLA options of `xla_config.py`: what they change in a compiled step, and that an
option named in XLA_FLAGS is left to it."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

from resnet_identity import models
from resnet_identity.models import stack
from resnet_identity.models.layers import make_norm


def _unit():
    norm = make_norm(train=True, group_size=None, dtype=jnp.float32)
    return functools.partial(models.PreActivation, 8, 1, bottleneck=True, preact="branch", norm=norm, train=True)


X = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))


def test_step_options_drop_the_loop_carry_copies_of_a_scanned_stack():
    """With `xla_config.step_compiler_options` XLA:CPU no longer copies the carried
    activation at the top of every scan iteration (forward and backward), and the
    gradient is bitwise the same."""
    from resnet_identity.training import xla_config

    module = stack.UnitStack(_unit(), 6)
    variables = module.init(jax.random.key(1), X)
    x = jax.random.normal(jax.random.key(2), (16, 8, 8, 8))

    def loss(params, x):
        y, _ = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(jnp.square(y))

    def activation_copies_in_loops(compiled):
        text = compiled.as_text()
        bodies = set(re.findall(r"while\(.*?body=%([\w.\-]+)", text))
        computations = re.findall(r"^(?:ENTRY )?%([\w.\-]+) .*?\{\n(.*?)\n\}", text, re.S | re.M)
        return [
            line
            for name, body in computations
            if name in bodies
            for line in re.findall(r"= f32\[16,8,8,8\]\S* copy\(", body)
        ]

    plain = jax.jit(jax.grad(loss)).lower(variables["params"], x).compile()
    options = xla_config.step_compiler_options("cpu")
    tuned = jax.jit(jax.grad(loss), compiler_options=options).lower(variables["params"], x).compile()
    assert len(activation_copies_in_loops(plain)) == 2 and not activation_copies_in_loops(tuned)
    for a, b in zip(jax.tree.leaves(plain(variables["params"], x)), jax.tree.leaves(tuned(variables["params"], x))):
        np.testing.assert_array_equal(a, b)
    assert xla_config.step_compiler_options("tpu") is None


def test_gpu_step_options_leave_an_option_named_in_xla_flags_to_it(monkeypatch):
    from resnet_identity.training import xla_config

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert xla_config.step_compiler_options("gpu") == xla_config.GPU_STEP_OPTIONS
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_experimental_enable_conv_fusion=false")
    options = xla_config.step_compiler_options("gpu")
    assert "xla_gpu_experimental_enable_conv_fusion" not in options and len(options) == 3
    # Every option is one this jaxlib knows (compiling for CPU validates the names too).
    jax.jit(lambda x: x + 1).lower(1.0).compile(compiler_options=xla_config.GPU_STEP_OPTIONS)


def test_step_options_respect_an_optimisation_level_set_in_xla_flags(monkeypatch):
    from resnet_identity.training import xla_config

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert xla_config.step_compiler_options("cpu")["xla_backend_optimization_level"] == 1
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    assert "xla_backend_optimization_level" not in xla_config.step_compiler_options("cpu")
