"""What Keras' base optimizer offers works with ours: one test (at least) each."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_optlab as ko
from tests.cases import OPTIMIZERS


def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 3))).argmax(axis=1)
    return x, y


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(3)]
    )


def _fit(optimizer, epochs=3, jit_compile=False, **fit_kwargs):
    model = _model()
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    x, y = _data()
    model.fit(x, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0, **fit_kwargs)
    return model


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_fit_with_xla_matches_without(cls):
    """XLA reorders float operations: after 3 epochs the weights agree to 1e-4 relative
    (Keras' own optimizers differ by about as much)."""
    plain = _fit(cls(), jit_compile=False)
    xla = _fit(cls(), jit_compile=True)
    for a, b in zip(plain.get_weights(), xla.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert plain.optimizer.iterations.numpy() == 24


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_apply_under_xla_does_not_retrace(cls):
    opt = cls()
    w = keras.Variable(np.ones((4, 3), "float32"))
    opt.build([w])

    @tf.function(jit_compile=True)
    def step(g):
        opt.apply([g], [w])

    step(tf.ones((4, 3)))
    step(tf.fill((4, 3), 2.0))
    assert step.experimental_get_tracing_count() == 1


def _apply(opt, grads, w0=(1.0, -2.0, 3.0), dtype="float32"):
    w = keras.Variable(np.array(w0, dtype=dtype), dtype=dtype)
    for g in grads:
        opt.apply([tf.constant(g, dtype=dtype)], [w])
    return w.numpy()


def test_schedule_and_callable_learning_rates():
    sched = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    got = _apply(ko.SGD(learning_rate=sched), [[1.0, 1.0, 1.0]] * 3)
    np.testing.assert_allclose(got, np.array([1.0, -2.0, 3.0]) - (0.1 + 0.05 + 0.025), rtol=1e-6)
    got = _apply(ko.SGD(learning_rate=lambda: 0.2), [[1.0, 1.0, 1.0]])
    np.testing.assert_allclose(got, [0.8, -2.2, 2.8], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, clipped",
    [
        ({"clipnorm": 1.0}, np.array([3.0, 4.0, 0.0]) / 5.0),
        ({"clipvalue": 0.5}, [0.5, 0.5, 0.0]),
        ({"global_clipnorm": 2.5}, np.array([3.0, 4.0, 0.0]) / 2.0),
    ],
)
def test_gradient_clipping(kwargs, clipped):
    got = _apply(ko.SGD(learning_rate=1.0, **kwargs), [[3.0, 4.0, 0.0]])
    np.testing.assert_allclose(got, np.array([1.0, -2.0, 3.0]) - clipped, rtol=1e-6)


def test_weight_decay_is_decoupled_by_default_and_respects_exclusions():
    opt = ko.Adam(learning_rate=0.1, weight_decay=0.5)
    w, b = keras.Variable(np.array([2.0]), name="kernel"), keras.Variable(np.array([2.0]), name="bias")
    opt.exclude_from_weight_decay(var_names=["bias"])
    opt.apply([tf.constant([0.0]), tf.constant([0.0])], [w, b])
    np.testing.assert_allclose(w.numpy(), [2.0 - 0.1 * 0.5 * 2.0], rtol=1e-6)  # g = 0: decay alone
    np.testing.assert_allclose(b.numpy(), [2.0])


def test_exponential_moving_average():
    opt = ko.SGD(learning_rate=0.1, use_ema=True, ema_momentum=0.5)
    w = keras.Variable(np.array([1.0]))
    values = []
    for g in [1.0, 2.0, 3.0]:
        opt.apply([tf.constant([g])], [w])
        values.append(w.numpy()[0])
    average = values[0]  # Keras starts the average at the first step's weights
    for value in values[1:]:
        average = 0.5 * average + 0.5 * value
    opt.finalize_variable_values([w])
    np.testing.assert_allclose(w.numpy(), [average], rtol=1e-6)


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_gradient_accumulation(cls):
    """Two accumulated steps are one step with the mean gradient."""
    g1, g2 = [1.0, -2.0, 0.5], [3.0, 0.0, -0.5]
    accumulated = _apply(cls(gradient_accumulation_steps=2), [g1, g2])
    one = _apply(cls(), [np.mean([g1, g2], axis=0)])
    np.testing.assert_allclose(accumulated, one, rtol=1e-6)


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_loss_scale_optimizer_under_mixed_float16(cls):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _fit(keras.optimizers.LossScaleOptimizer(cls()), epochs=1)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert isinstance(model.optimizer.inner_optimizer, cls)
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert model.optimizer.inner_optimizer.iterations.numpy() > 0


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_variables_update_in_float32_and_stay_finite(cls, dtype):
    """A zero gradient with a zero cache is where epsilon (0 in float16) would divide by 0."""
    grads = [[0.0, 1.0, -1.0], [0.0, 0.5, 2.0], [0.0, 0.0, 1.0]]
    opt = cls()
    got = _apply(opt, grads, w0=[0.5, 0.25, -0.5], dtype=dtype)
    assert np.isfinite(got.astype("float32")).all()
    assert all(v.dtype == "float32" for v in opt.variables[2:])  # slots in float32
    want = _apply(cls(), grads, w0=[0.5, 0.25, -0.5], dtype="float32")
    np.testing.assert_allclose(got.astype("float32"), want, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_float64_variables(cls):
    opt = cls()
    got = _apply(opt, [[1.0, 2.0, 3.0]], dtype="float64")
    assert got.dtype == np.float64 and all(v.dtype == "float64" for v in opt.variables[2:])


def test_variable_without_gradient_is_left_alone():
    opt = ko.Adam()
    w1, w2 = keras.Variable(np.ones(2)), keras.Variable(np.ones(2))
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        opt.apply([tf.constant([1.0, 1.0]), None], [w1, w2])
    np.testing.assert_array_equal(w2.numpy(), [1.0, 1.0])
    assert not np.allclose(w1.numpy(), 1.0)


def _embedding_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((4,), dtype="int32"), keras.layers.Embedding(10, 3), keras.layers.Flatten()]
    )


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_sparse_embedding_gradient_with_repeated_indices_equals_dense(cls):
    ids = tf.constant([[1, 1, 2, 5], [2, 7, 1, 1]])
    target = tf.constant(np.random.default_rng(0).normal(size=(2, 12)), tf.float32)
    results = []
    for densify in (False, True):
        model, opt = _embedding_model(), cls(learning_rate=0.1)
        for _ in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum((model(ids) - target) ** 2)
            grads = tape.gradient(loss, model.trainable_variables)
            assert isinstance(grads[0], tf.IndexedSlices)
            opt.apply([tf.convert_to_tensor(g) if densify else g for g in grads], model.trainable_variables)
        results.append(model.get_weights()[0])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-7)


def test_sparse_update_leaves_untouched_rows_of_adagrad_alone():
    model, opt = _embedding_model(), ko.Adagrad(learning_rate=0.1, initial_accumulator_value=0.1)
    before = model.get_weights()[0]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(tf.constant([[1, 1, 2, 5]])))
    opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    after = model.get_weights()[0]
    untouched = [0, 3, 4, 6, 7, 8, 9]
    np.testing.assert_array_equal(after[untouched], before[untouched])
    assert opt.initial_state_mask(model.trainable_variables[0]).numpy()[untouched].all()


def test_sparse_embedding_under_xla_fit():
    model = _embedding_model()
    model.compile(optimizer=ko.Adagrad(), loss="mse", jit_compile=True)
    x = np.array([[1, 1, 2, 5], [2, 7, 1, 1]] * 8)
    model.fit(x, np.ones((16, 12)), epochs=1, verbose=0)
    assert np.isfinite(model.get_weights()[0]).all()


def test_apply_gradients_in_a_custom_loop():
    model, opt = _model(), ko.Momentum(learning_rate=0.05)
    x, y = _data()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    losses = []
    for _ in range(30):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x))
        opt.apply_gradients(
            zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables, strict=True)
        )
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert opt.iterations.numpy() == 30


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_lookup_by_registered_name_and_config(cls):
    name = f"keras_optlab>{cls.__name__}"
    assert type(keras.optimizers.get(name)) is cls
    opt = cls.like("pytorch", learning_rate=0.02, weight_decay=0.1)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(restored) is cls and restored.get_config() == opt.get_config()
    assert keras.saving.get_registered_name(cls) == name


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_config_round_trip_holds_every_constructor_argument(cls):
    import inspect

    opt = cls.like("keras", learning_rate=0.02)
    config = opt.get_config()
    own = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    base = set(inspect.signature(ko.OptlabOptimizer.__init__).parameters) - {"self", "kwargs"}
    assert own | base <= set(config)
    assert cls.from_config(config).get_config() == config


def test_like_presets_and_unknown_framework():
    assert ko.Adam.like("torch", name="a").get_config() == ko.Adam.like("pytorch", name="a").get_config()
    assert ko.Adam.like("pytorch").coupled_weight_decay and not ko.Adam.like("optax").coupled_weight_decay
    assert ko.Adam.like("keras", epsilon=1e-3).epsilon == 1e-3
    with pytest.raises(ValueError, match="`framework` must be one of"):
        ko.Adam.like("jax")
