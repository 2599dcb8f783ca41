"""Signal-propagation measurements (v2 Sec. 3-4) and the unit listings, on tiny nets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_identity import models
from resnet_identity.analysis import paper, signal
from resnet_identity.analysis.unit_ops import unit_ops
from resnet_identity.models import ImageNetStem, Plain, PostActivation, PreActivation, ResNet, unrolled_to_stacked

UNITS = 4


def one_stage(unit, **options) -> ResNet:
    """Four 16-channel units behind the ImageNet stem, which BN-ReLUs its output, so even the
    first unit's shortcut is the identity (`no_preact`)."""
    return ResNet(
        stage_sizes=(UNITS,),
        stage_features=(16,),
        unit=unit,
        unit_options=options or None,
        bottleneck=False,
        stem=ImageNetStem,
        stem_features=16,
        num_classes=10,
        shortcut="A",
        scan=False,
    )


def batch():
    images = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
    return images, jnp.array([0, 1, 2, 3])


def zero_branches(variables, leaf_module):
    """Zeroes F in every unit: the kernel of its last conv (v2) or the affine of its last BN (v1)."""

    def zero(path, leaf):
        names = [getattr(k, "key", "") for k in path]
        return jnp.zeros_like(leaf) if leaf_module in names and names[0] == "params" else leaf

    return jax.tree_util.tree_map_with_path(zero, variables)


def init(model):
    return signal.init_variables(model)


@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_scaled_shortcut_with_zero_branch_scales_each_unit_exactly(scale):
    # x_{l+1} = lambda x_l (v2 Eq. 8 with F = 0): forward norms scale by lambda per unit and
    # gradients by lambda per unit going back (Eq. 9's prod lambda_i).
    model = one_stage(signal.ScaledShortcutPreActivation, shortcut_scale=scale)
    variables = zero_branches(init(model), "conv2")
    forward, backward = signal.unit_norms(model, variables, *batch())
    assert forward.shape == backward.shape == (UNITS,)
    np.testing.assert_allclose(forward[1:] / forward[:-1], scale, rtol=1e-5)
    np.testing.assert_allclose(backward[:-1] / backward[1:], scale, rtol=1e-5)


def test_v2_with_zero_branches_passes_the_gradient_unchanged_to_the_first_unit():
    # v2 Eq. 5 with F = 0: dE/dx_l = dE/dx_L for every l.
    model = one_stage(PreActivation)
    forward, backward = signal.unit_norms(model, zero_branches(init(model), "conv2"), *batch())
    np.testing.assert_allclose(backward, backward[-1], rtol=1e-6)
    np.testing.assert_allclose(forward, forward[0], rtol=1e-6)


def test_shortcut_only_gradient_is_eq5_and_eq9_first_term_with_live_branches():
    # With branches detached, dE/dx_l = (prod lambda) dE/dx_L exactly, whatever F computes.
    images, labels = batch()
    v2 = one_stage(PreActivation)
    _, direct = signal.unit_norms(v2, init(v2), images, labels, shortcut_only=True)
    _, total = signal.unit_norms(v2, init(v2), images, labels)
    np.testing.assert_allclose(direct, direct[-1], rtol=1e-6)  # every unit sees dE/dx_L itself
    assert not np.allclose(total, direct)  # the branches add the second term of Eq. 5
    scaled = one_stage(signal.ScaledShortcutPreActivation, shortcut_scale=0.5)
    _, direct = signal.unit_norms(scaled, init(scaled), images, labels, shortcut_only=True)
    np.testing.assert_allclose(direct[:-1] / direct[1:], 0.5, rtol=1e-5)


def test_v1_combine_is_detached_too_and_plain_units_refuse():
    images, labels = batch()
    v1 = one_stage(PostActivation)
    _, direct = signal.unit_norms(v1, zero_branches(init(v1), "bn2"), images, labels, shortcut_only=True)
    assert np.all(np.isfinite(direct)) and direct[0] > 0
    plain = one_stage(Plain)
    with pytest.raises(ValueError, match="shortcut_only"):
        signal.unit_norms(plain, init(plain), images, labels, shortcut_only=True)


def test_forward_norm_is_the_rms_of_each_units_input():
    model = one_stage(PreActivation)
    variables = init(model)
    images, labels = batch()
    forward, _ = signal.unit_norms(model, variables, images, labels)
    _, state = model.apply(
        variables, images, train=True, capture_intermediates=True, mutable=["batch_stats", "intermediates"]
    )
    stem = state["intermediates"]["stem"]["__call__"][0]
    assert forward[0] == pytest.approx(float(jnp.sqrt(jnp.mean(stem**2))), rel=1e-5)


def test_scanned_model_gives_the_same_norms_as_its_unrolled_twin():
    unrolled = models.create_model("cifar_preact20", num_classes=10, depth=14, scan=False)
    variables = init(unrolled)
    stacked = unrolled_to_stacked(variables)
    scanned = unrolled.clone(scan=True)
    images, labels = batch()
    a = signal.unit_norms(unrolled, variables, images, labels)
    b = signal.unit_norms(scanned, stacked, images, labels)
    assert a[0].shape == (6,)
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_scaled_shortcut_unit_shares_the_preactivation_parameters():
    base = models.create_model("cifar_preact20", num_classes=10, depth=8)
    nets = signal.comparison_models(8, bottleneck=False, scales=(0.5,))
    assert set(nets) == {"plain-8", "v1 ResNet-8", "v2 ResNet-8", "v2, shortcut x0.5"}
    shapes = lambda m: jax.tree.map(lambda a: a.shape, init(m)["params"])  # noqa: E731
    assert shapes(nets["v2, shortcut x0.5"]) == shapes(base.clone(scan=False))


def test_unit_ops_put_the_activations_where_v2_fig4_draws_them():
    kinds = lambda name: [
        (op.kind, op.after_addition)
        for op in unit_ops(  # noqa: E731
            models.UNITS[name].cls(16, shortcut="A"), (2, 8, 8, 16)
        )
    ]
    assert kinds("original") == [
        ("conv", False),
        ("bn", False),
        ("relu", False),
        ("conv", False),
        ("bn", False),
        ("add", False),
        ("relu", True),
    ]
    assert kinds("full_preact") == [
        ("bn", False),
        ("relu", False),
        ("conv", False),
        ("bn", False),
        ("relu", False),
        ("conv", False),
        ("add", False),
    ]
    assert kinds("bn_after_addition")[-3:] == [("add", False), ("bn", True), ("relu", True)]


def test_unit_ops_name_the_1x1_convs_and_the_projection_shortcut():
    # On CPU the 1x1 convs are matrix products behind `lax.platform_dependent`, a `cond`
    # whose branches are a tuple of jaxprs: the listing must still see their convs.
    opening = models.UNITS["full_preact"].cls(32, strides=2, bottleneck=True, shortcut="B", preact="both")
    labels = [op.label for op in unit_ops(opening, (2, 8, 8, 16))]
    assert labels[2] == "conv1: conv 1x1, 16->8, stride 2"
    assert labels[5] == "conv2: conv 3x3, 8->8"
    assert labels[8] == "conv3: conv 1x1, 8->32"
    assert labels[9] == "shortcut: conv 1x1, 16->32, stride 2"
    v1 = models.UNITS["original"].cls(32, strides=2, bottleneck=False, shortcut="B", preact="both")
    assert "shortcut: conv 1x1, 16->32, stride 2 + BN" in [op.label for op in unit_ops(v1, (2, 8, 8, 16))]


def test_paper_experiments_cover_the_registry():
    from resnet_identity.analysis.experiments import EXPERIMENTS

    for experiment in EXPERIMENTS.values():
        for row in experiment.rows:
            assert row.model in models.available_models(), row
            assert row.overrides.get("unit", next(iter(models.UNITS))) in models.UNITS, row
    assert set(paper.PARAMETERS) <= set(models.available_models())


def test_analysis_modules_import_one_way():
    """No module of `analysis` imports, even for type checking or inside a function, one that
    imports it back: `runs` -> `report` -> `plots` -> `results`, never the other way."""
    import ast
    import pathlib

    import resnet_identity.analysis as package

    folder = pathlib.Path(package.__file__).parent
    imports = {}
    for path in folder.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "resnet_identity.analysis":
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom | ast.Import):
                for module in [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]:
                    if module and module.startswith("resnet_identity.analysis."):
                        names.add(module.split(".")[2])
        imports[path.stem] = names
    assert imports["runs"] >= {"report", "results"} and "results" in imports["plots"]

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(n == target or (n not in seen and reaches(n, target, seen | {n})) for n in imports.get(start, ()))

    assert [module for module in imports if reaches(module, module, set())] == []
