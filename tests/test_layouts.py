"""The update paths and slot layouts: grouped or one variable at a time, slots per
variable or in flat buffers (`flat_slots`), all take the same steps.

Backend-neutral (test_backends.py runs it under JAX and PyTorch too): the grouped
update of the default layout is TensorFlow's, the flat layout is every backend's.
"""

import warnings

import keras
import numpy as np
import pytest

import keras_optlab as ko
from keras_optlab.optimizers import _paths
from keras_optlab.optimizers._groups import Group
from tests.cases import OPTIMIZERS, RULES, Case, schedule

TF = keras.backend.backend() == "tensorflow"
# Small variables of several shapes (a scalar among them) and one that is not small.
SHAPES = [(3, 4), (5,), (), (2, 3, 2), (_paths.SMALL + 10,)]
# The same, with small variables enough for a group that the policy compiles.
BIG_GROUPS = [*SHAPES[:-1], (_paths.GROUP_COMPILE_MIN // 2,), (_paths.GROUP_COMPILE_MIN // 2,), SHAPES[-1]]
STEPS = 30
# Slot layouts, and the drivers that take groups (chosen by `fused_update`); the first is the
# reference driver. Elsewhere than on TensorFlow `fused_update` chooses nothing (every variable
# takes the reference driver, the flat layout's groups are never compiled): there the op-by-op
# and compiled entries would repeat the default and flat-slot runs step for step.
LAYOUTS = {"default": {}, "flat slots": {"flat_slots": True}}
if TF:
    LAYOUTS = {
        "op by op": {"fused_update": False},
        **LAYOUTS,
        "flat slots, op by op": {"flat_slots": True, "fused_update": False},
        "compiled groups": {"fused_update": "compiled_group"},
        "flat slots, compiled groups": {"flat_slots": True, "fused_update": "compiled_group"},
    }
# Each optimizer with weight decay (decoupled, or coupled: the weights enter the
# gradient), and the switches that add slots.
CASES = [Case(cls, {"weight_decay": 0.01}) for cls in RULES] + [
    Case(ko.Adam, {"amsgrad": True, "weight_decay": 0.01, "coupled_weight_decay": True}),
    Case(ko.RMSProp, {"centered": True, "momentum": 0.9}),
    Case(ko.Momentum, {"lr_in_momentum": False}),
]
MISSING = 1  # the variable that gets no gradient at every fourth step


def _gradients(dtype, shapes=SHAPES):
    rng = np.random.default_rng(0)
    return [[rng.normal(size=shape).astype(dtype) for shape in shapes] for _ in range(STEPS)]


def _trajectory(optimizer, dtype="float64", jit=False, shapes=SHAPES, grads=None):
    return _trajectories([optimizer], dtype, jit, shapes, grads)[0]


def _trajectories(optimizers, dtype="float64", jit=False, shapes=SHAPES, grads=None):
    """For each optimizer (each on its own variables, all stepped in one function):
    weights and per-variable state after STEPS steps, one variable going without a
    gradient every fourth step and one excluded from weight decay; and the paths its
    steps took (`update_plan`): Group for a group's step, and "compiled" where XLA
    compiled it, "kernel", "xla", "reference")."""
    rng = np.random.default_rng(1)
    initial = [rng.normal(size=shape).astype(dtype) for shape in shapes]
    runs = []
    for optimizer in optimizers:
        variables = [keras.Variable(w, dtype=dtype, name=f"w{i}") for i, w in enumerate(initial)]
        optimizer.exclude_from_weight_decay(var_names=["w3"])  # a small variable without decay
        optimizer.build(variables)
        runs.append((optimizer, variables, set()))

    def step(gs):
        for optimizer, variables, _ in runs:
            optimizer.apply(gs, variables)

    if TF:
        import tensorflow as tf

        step = tf.function(step, jit_compile=jit)
    elif keras.backend.backend() == "jax":
        steps = [_jax_step(optimizer, variables) for optimizer, variables, _ in runs]

        def step(gs):
            for one in steps:
                one(gs)

    for t, gs in enumerate(grads or _gradients(dtype, shapes)):
        gs = [keras.ops.convert_to_tensor(g) for g in gs]
        if t % 4 == 1:
            gs[MISSING] = None
        with warnings.catch_warnings():  # Keras warns of the missing gradient
            warnings.simplefilter("ignore")
            step(gs)
        for optimizer, _, plans in runs:
            plans.update((driver, tuple(paths)) for driver, paths in optimizer.update_plan)
    out = []
    for optimizer, variables, plans in runs:
        weights = [keras.ops.convert_to_numpy(v) for v in variables]
        states = [
            {k: keras.ops.convert_to_numpy(s) for k, s in optimizer.state(v).items()} for v in variables
        ]
        out.append((weights, states, _given(plans)))
    return out


def _jax_step(optimizer, variables):
    """One step of `optimizer` on `variables`: `stateless_apply` under `jax.jit` (what `fit`
    runs on JAX), its results assigned to the variables."""
    import jax

    apply = jax.jit(optimizer.stateless_apply)

    def step(gs):
        values, optimizer_values = apply(
            [v.value for v in optimizer.variables], gs, [v.value for v in variables]
        )
        for variable, value in zip(
            [*variables, *optimizer.variables], [*values, *optimizer_values], strict=True
        ):
            variable.assign(value)

    return step


def _given(plans):
    given = []
    for driver, paths in plans:
        given += [Group, "compiled"] if driver == "compiled_group" else [Group] if driver == "group" else []
        given += [driver] * len(paths) if driver in ("kernel", "xla", "reference") else []
    return given


def _assert_same(a, b, **tolerance):
    pairs = zip(a[0], a[1], b[0], b[1], strict=True)
    for wa, sa, wb, sb in pairs:
        np.testing.assert_allclose(wa, wb, **tolerance)
        assert sa.keys() == sb.keys()
        for name in sa:
            assert sa[name].shape == sb[name].shape
            np.testing.assert_allclose(sa[name], sb[name], **tolerance)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_layout_takes_the_same_steps(case):
    """Float rounding apart (the XLA-compiled update of the large variable uses fused
    multiply-adds), every path and layout gives the same weights and state."""
    optimizers = [
        case.optimizer(learning_rate=schedule(case.cls, STEPS), **layout) for layout in LAYOUTS.values()
    ]
    reference, *others = _trajectories(optimizers)
    for name, got in zip(list(LAYOUTS)[1:], others, strict=True):
        _assert_same(got, reference, rtol=1e-12, atol=1e-15, err_msg=name)


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_which_path_the_small_variables_take(cls):
    """With flat slots always as groups (for a rule with slots). By default, in a
    TensorFlow graph, as groups for RMSProp and Adam, each through its fused kernel for
    the others (all but RMSProp have one at their defaults); one by one under XLA and
    on the other backends. A group's step is compiled in a TensorFlow graph, unless
    `fused_update=False`."""
    has_slots = cls is not ko.SGD
    optimizers = [cls(flat_slots=True), cls(flat_slots=True, fused_update=False), cls()]
    (*_, flat), (*_, flat_op_by_op), (*_, default) = _trajectories(optimizers, shapes=BIG_GROUPS)
    assert (Group in flat) == (Group in flat_op_by_op) == has_slots
    assert (Group in default) == (cls in (ko.RMSProp, ko.Adam) and TF)
    assert ("compiled" in flat) == (has_slots and TF)
    assert ("compiled" in default) == (Group in default)
    assert "compiled" not in flat_op_by_op
    if not TF:
        assert "kernel" not in default
    elif cls in (ko.RMSProp, ko.Adam):
        assert ("kernel" in default) == (cls is ko.Adam)  # the large variable's
    else:
        assert set(default) == {"kernel"}  # every variable, none op by op
    # An XLA cluster for the large variable where no kernel computes the rule.
    assert default.count("xla") == (1 if cls is ko.RMSProp and TF else 0)
    if TF:
        *_, xla = _trajectory(cls(), jit=True)
        assert Group not in xla and "kernel" not in xla
        *_, flat_xla = _trajectory(cls(flat_slots=True), jit=True)
        assert (Group in flat_xla) == has_slots and "compiled" not in flat_xla


@pytest.mark.skipif(not TF, reason="groups are compiled in TensorFlow graphs only")
def test_a_group_is_compiled_from_its_size():
    """Compiling a group pays from `GROUP_COMPILE_MIN` elements on: a smaller one
    steps op by op, the same numbers."""
    half = _paths.GROUP_COMPILE_MIN // 2
    for shapes, compiled in ([(3, 4), (5,)], False), ([(half,), (half,)], True):
        got = _trajectory(ko.Adam(flat_slots=True), shapes=shapes)
        assert ("compiled" in got[2]) == compiled
        _assert_same(got, _trajectory(ko.Adam(fused_update=False), shapes=shapes), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("layout", ["default", "flat slots"])
def test_a_variable_without_gradient_is_left_as_it_is(layout):
    optimizer = ko.Adam(**LAYOUTS[layout])
    grads = _gradients("float64")[:2]  # the second step goes without gradient for MISSING
    before = _trajectory(ko.Adam(**LAYOUTS[layout]), grads=grads[:1])
    after = _trajectory(optimizer, grads=grads)
    np.testing.assert_array_equal(after[0][MISSING], before[0][MISSING])
    for name in ("m", "v"):
        np.testing.assert_array_equal(after[1][MISSING][name], before[1][MISSING][name])
    assert not np.array_equal(after[0][0], before[0][0])  # the others did move


def test_flat_layout_holds_one_buffer_per_slot_and_group():
    """Adam's m and v: the large variable's own, and one buffer for the four small
    ones of each dtype; slot() and state() still answer per variable."""
    optimizer = ko.Adam(flat_slots=True)
    variables = [keras.Variable(np.zeros(shape, "float32")) for shape in SHAPES]
    variables.append(keras.Variable(np.zeros((2, 2), "float64")))
    optimizer.build(variables)
    slots = [v for v in optimizer.variables if v.path.split("/")[-1] not in ("iteration", "learning_rate")]
    small = sum(int(np.prod(s)) for s in SHAPES[:-1])
    assert sorted(tuple(v.shape) for v in slots) == sorted([SHAPES[-1]] * 2 + [(small,)] * 2 + [(4,)] * 2)
    assert {v.path.split("/")[-1] for v in slots if len(v.shape) == 1 and v.shape[0] < 100} == {
        "m_float32",
        "v_float32",
        "m_float64",
        "v_float64",
    }
    for variable in variables:
        state = optimizer.state(variable)
        assert [tuple(s.shape) for s in state.values()] == [tuple(variable.shape)] * 2
        assert tuple(optimizer.effective_learning_rate(variable).shape) == tuple(variable.shape)


@pytest.mark.parametrize("layout", ["default", "flat slots"])
def test_float16_variables_share_a_float32_group(layout):
    """Their slots (and buffers) are float32 and their update is computed in float32,
    as one variable at a time (float rounding apart: in a TensorFlow graph XLA compiles
    a group's arithmetic)."""
    shapes = [(3, 4), (7,)]
    got = _trajectory(ko.Adam(**LAYOUTS[layout]), "float16", shapes=shapes)
    want = _trajectory(ko.Adam(fused_update=False), "float16", shapes=shapes)
    _assert_same(got, want, rtol=1e-3, atol=1e-3)
    assert all(s.dtype == np.float32 for state in got[1] for s in state.values())


@pytest.mark.parametrize("cls", [ko.Adagrad, ko.Adam], ids=lambda c: c.__name__)
def test_a_large_float16_variable_takes_no_kernel_and_steps_in_float32(cls):
    """The fused kernels want slots at the variable's dtype; a float16 variable's are
    float32, so its step goes through the compiled rule (the same numbers, float16
    rounding apart)."""
    shapes = [(5,), SHAPES[-1]]  # (the large one goes without a gradient at times)
    got = _trajectory(cls(), "float16", shapes=shapes)
    want = _trajectory(cls(fused_update=False), "float16", shapes=shapes)
    _assert_same(got, want, rtol=1e-3, atol=1e-3)


def _one_step(optimizer, gradient):
    """One step on a (4, 2) variable with `gradient` and a (3,) one: two small ones."""
    import tensorflow as tf

    w, other = keras.Variable(np.ones((4, 2))), keras.Variable(np.ones(3))
    optimizer.build([w, other])
    tf.function(lambda g: optimizer.apply([g, tf.ones(3, "float64")], [w, other]))(gradient)
    return w.numpy(), optimizer.state(w)["cache"].numpy()


@pytest.mark.skipif(not TF, reason="sparse gradients are TensorFlow's")
@pytest.mark.parametrize("cls", [ko.Adagrad, ko.RMSProp], ids=lambda c: c.__name__)
@pytest.mark.parametrize("layout", ["default", "flat slots"])
def test_a_sparse_gradient_in_a_group_is_its_dense_gradient(cls, layout):
    """(In the default layout only RMSProp groups; Adagrad there updates the rows.)"""
    import tensorflow as tf

    values = tf.constant(np.arange(6.0).reshape(3, 2))
    sparse = tf.IndexedSlices(values, tf.constant([0, 1, 3]), tf.constant([4, 2]))
    result = [_one_step(cls(**LAYOUTS[layout]), g) for g in (tf.convert_to_tensor(sparse), sparse)]
    np.testing.assert_array_equal(result[0][0], result[1][0])
    np.testing.assert_array_equal(result[0][1], result[1][1])


@pytest.mark.skipif(not TF, reason="tf.distribute is TensorFlow's")
def test_flat_slots_under_a_strategy_is_refused():
    import tensorflow as tf

    optimizer = ko.Adam(flat_slots=True)
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        variable = keras.Variable(np.zeros(3, "float32"))
        with pytest.raises(ValueError, match=r"`flat_slots=True` cannot be used under a tf.distribute"):
            optimizer.build([variable])
    assert not optimizer.built


# ------------------------------------------------------------------ saving
def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    return x, (x @ rng.normal(size=(6, 2))).astype("float32")


def _model(optimizer):  # compiled with mse (a test may compile it again)
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)]
    )
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _fit(model, epochs, initial_epoch=0):
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=epochs, initial_epoch=initial_epoch, shuffle=False, verbose=0)
    return model


def _states(model):
    optimizer = model.optimizer
    return [
        {k: keras.ops.convert_to_numpy(s) for k, s in optimizer.state(v).items()}
        for v in model.trainable_variables
    ]


@pytest.mark.parametrize("cls", [ko.Momentum, ko.Adam])
def test_flat_layout_saves_loads_and_resumes_bit_for_bit(cls, tmp_path):
    make = lambda: cls.like("pytorch", weight_decay=0.01, flat_slots=True)  # noqa: E731
    half = _fit(_model(make()), 2)
    half.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    assert restored.optimizer.flat_slots
    for a, b in zip(half.optimizer.variables, restored.optimizer.variables, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    resumed = _fit(restored, 4, initial_epoch=2)
    uninterrupted = _fit(_model(make()), 4)
    for a, b in zip(resumed.get_weights(), uninterrupted.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("saved_flat", [False, True], ids=["per-variable to flat", "flat to per-variable"])
def test_a_saved_optimizer_loads_into_the_other_layout(saved_flat, tmp_path):
    saved = _fit(_model(ko.Adam(amsgrad=True, flat_slots=saved_flat)), 2)
    saved.save_weights(tmp_path / "w.weights.h5")
    other = _model(ko.Adam(amsgrad=True, flat_slots=not saved_flat))
    other.optimizer.build(other.trainable_variables)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras' "Skipping variable loading" would fail here
        other.load_weights(tmp_path / "w.weights.h5")
    assert len(other.optimizer.variables) != len(saved.optimizer.variables)
    for a, b in zip(_states(saved), _states(other), strict=True):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(other.optimizer.iterations),
        keras.ops.convert_to_numpy(saved.optimizer.iterations),
    )


# ------------------------------------------------- Keras' features, flat slots
FEATURES = {
    "gradient accumulation": {"gradient_accumulation_steps": 2},
    "EMA": {"use_ema": True, "ema_overwrite_frequency": 3},
    "global clipnorm": {"global_clipnorm": 0.5},
    "loss scaling": {"loss_scale": True},
}
if TF:  # (on PyTorch jit_compile means torch.compile, a different matter)
    FEATURES["XLA"] = {"jit_compile": True}


@pytest.mark.parametrize("feature", FEATURES.values(), ids=FEATURES.keys())
def test_keras_features_take_the_same_steps_with_flat_slots(feature):
    feature = dict(feature)
    compile_kwargs = {"jit_compile": feature.pop("jit_compile", False)}
    loss_scale = feature.pop("loss_scale", False)
    weights = []
    for flat in (False, True):
        optimizer = ko.Adam(0.01, flat_slots=flat, **feature)
        if loss_scale:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model = _model(optimizer)
        model.compile(optimizer=optimizer, loss="mse", **compile_kwargs)
        weights.append(_fit(model, 2).get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
