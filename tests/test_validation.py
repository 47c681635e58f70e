"""Bad input for every argument of every optimizer: a clear error, never silence."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_optlab as ko
from tests.cases import OPTIMIZERS

NAN, INF = math.nan, math.inf

# (argument, bad value, error type, message fragment); checked on every optimizer.
COMMON = [
    ("learning_rate", -0.1, ValueError, "`learning_rate` must be a finite number in [0, inf)"),
    ("learning_rate", NAN, ValueError, "Received: learning_rate=nan"),
    ("learning_rate", INF, ValueError, "Received: learning_rate=inf"),
    ("learning_rate", "0.1", TypeError, "Received: learning_rate='0.1'"),
    ("learning_rate", True, TypeError, "Received: learning_rate=True"),
    ("learning_rate", None, TypeError, "Received: learning_rate=None"),
    ("learning_rate", np.ones(2), TypeError, "`learning_rate` must be a float"),
    ("weight_decay", -1.0, ValueError, "`weight_decay` must be a finite number in [0, inf)"),
    ("weight_decay", NAN, ValueError, "Received: weight_decay=nan"),
    ("weight_decay", "1", TypeError, "Received: weight_decay='1'"),
    (
        "coupled_weight_decay",
        1,
        TypeError,
        "`coupled_weight_decay` must be a bool. Received: coupled_weight_decay=1",
    ),
    ("fused_update", "no", TypeError, "`fused_update` must be a bool. Received: fused_update='no'"),
    ("flat_slots", 1, TypeError, "`flat_slots` must be a bool. Received: flat_slots=1"),
    ("clipnorm", 0.0, ValueError, "`clipnorm` must be a finite number in (0, inf). Received: clipnorm=0.0"),
    ("clipnorm", -1.0, ValueError, "Received: clipnorm=-1.0"),
    ("clipvalue", INF, ValueError, "Received: clipvalue=inf"),
    ("global_clipnorm", NAN, ValueError, "Received: global_clipnorm=nan"),
    ("use_ema", "yes", TypeError, "`use_ema` must be a bool. Received: use_ema='yes'"),
    (
        "ema_momentum",
        1.5,
        ValueError,
        "`ema_momentum` must be a finite number in [0, 1]. Received: ema_momentum=1.5",
    ),
    ("ema_overwrite_frequency", 0, ValueError, "`ema_overwrite_frequency` must be an int >= 1"),
    ("ema_overwrite_frequency", 2.5, TypeError, "Received: ema_overwrite_frequency=2.5"),
    ("loss_scale_factor", 0.0, ValueError, "Received: loss_scale_factor=0.0"),
    ("gradient_accumulation_steps", 1, ValueError, "`gradient_accumulation_steps` must be an int >= 2"),
    ("gradient_accumulation_steps", 2.0, TypeError, "Received: gradient_accumulation_steps=2.0"),
    ("name", 3, TypeError, "`name` must be a string or None. Received: name=3"),
    ("no_such_argument", 1, ValueError, "Argument(s) not recognized: {'no_such_argument': 1}"),
]

OWN = {
    ko.Momentum: [
        (
            "momentum",
            -0.1,
            ValueError,
            "`momentum` must be a finite number in [0, 1]. Received: momentum=-0.1",
        ),
        ("momentum", 1.01, ValueError, "Received: momentum=1.01"),
        ("momentum", NAN, ValueError, "Received: momentum=nan"),
        ("momentum", "0.9", TypeError, "Received: momentum='0.9'"),
        ("lr_in_momentum", "no", TypeError, "`lr_in_momentum` must be a bool"),
    ],
    ko.Adagrad: [
        ("initial_accumulator_value", -0.1, ValueError, "Received: initial_accumulator_value=-0.1"),
        ("initial_accumulator_value", INF, ValueError, "Received: initial_accumulator_value=inf"),
        (
            "epsilon",
            -1e-8,
            ValueError,
            "`epsilon` must be a finite number in [0, inf). Received: epsilon=-1e-08",
        ),
        ("epsilon", NAN, ValueError, "Received: epsilon=nan"),
        ("epsilon", 0.0, ValueError, "`epsilon` and `initial_accumulator_value` cannot both be 0"),
        ("epsilon_inside_sqrt", None, TypeError, "`epsilon_inside_sqrt` must be a bool"),
        (
            "lr_decay",
            -0.5,
            ValueError,
            "`lr_decay` must be a finite number in [0, inf). Received: lr_decay=-0.5",
        ),
        ("lr_decay", [0.1], TypeError, "Received: lr_decay=[0.1]"),
    ],
    ko.RMSProp: [
        ("rho", 1.0, ValueError, "`rho` must be a finite number in [0, 1). Received: rho=1.0"),
        ("rho", -0.1, ValueError, "Received: rho=-0.1"),
        ("epsilon", 0.0, ValueError, "`epsilon` must be a finite number in (0, inf). Received: epsilon=0.0"),
        ("epsilon", INF, ValueError, "Received: epsilon=inf"),
        ("epsilon_inside_sqrt", 0, TypeError, "`epsilon_inside_sqrt` must be a bool"),
        ("centered", "False", TypeError, "`centered` must be a bool. Received: centered='False'"),
        ("momentum", 2.0, ValueError, "`momentum` must be a finite number in [0, 1]. Received: momentum=2.0"),
        ("lr_in_momentum", None, TypeError, "`lr_in_momentum` must be a bool"),
    ],
    ko.Adam: [
        ("beta_1", 1.0, ValueError, "`beta_1` must be a finite number in [0, 1). Received: beta_1=1.0"),
        ("beta_1", -0.5, ValueError, "Received: beta_1=-0.5"),
        ("beta_2", 1.5, ValueError, "`beta_2` must be a finite number in [0, 1). Received: beta_2=1.5"),
        ("beta_2", NAN, ValueError, "Received: beta_2=nan"),
        ("epsilon", 0.0, ValueError, "`epsilon` must be a finite number in (0, inf). Received: epsilon=0.0"),
        ("epsilon", "1e-8", TypeError, "Received: epsilon='1e-8'"),
        ("amsgrad", 1, TypeError, "`amsgrad` must be a bool. Received: amsgrad=1"),
        ("amsgrad_max", "max", ValueError, "`amsgrad_max` must be one of ['raw', 'corrected']"),
        ("epsilon_hat", "True", TypeError, "`epsilon_hat` must be a bool"),
        ("bias_correction", None, TypeError, "`bias_correction` must be a bool"),
    ],
}
OWN[ko.NAG] = OWN[ko.Momentum]

TABLE = [(cls, *row) for cls in OPTIMIZERS for row in COMMON + OWN.get(cls, [])]


@pytest.mark.parametrize(
    "cls, argument, value, error, message",
    TABLE,
    ids=[f"{row[0].__name__}-{row[1]}={row[2]!r}" for row in TABLE],
)
def test_bad_argument_is_refused_with_its_name_and_value(cls, argument, value, error, message):
    with pytest.raises(error) as info:
        cls(**{argument: value})
    assert message in str(info.value)


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_ints_and_numpy_floats_are_accepted_where_floats_are_meant(cls):
    opt = cls(learning_rate=1, weight_decay=np.float32(0.5))
    assert opt.get_config()["learning_rate"] == 1.0 and opt.weight_decay == 0.5


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_learning_rate_setter_validates_and_keeps_the_old_value(cls):
    opt = cls(learning_rate=0.1)
    for bad, error in [(-1.0, ValueError), (NAN, ValueError), ("fast", TypeError)]:
        with pytest.raises(error, match="learning_rate"):
            opt.learning_rate = bad
        np.testing.assert_allclose(float(opt.learning_rate), 0.1, rtol=1e-7)
    opt.learning_rate = np.float32(0.05)  # what LearningRateScheduler hands over
    np.testing.assert_allclose(float(opt.learning_rate), 0.05, rtol=1e-7)


def test_callbacks_that_set_the_learning_rate_work():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=ko.Adam(learning_rate=0.1), loss="mse")
    x, y = np.ones((8, 2)), np.zeros((8, 1))
    history = model.fit(
        x,
        y,
        epochs=2,
        verbose=0,
        callbacks=[
            keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5),
            keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=0, factor=0.5, min_delta=1e9),
        ],
    )
    assert len(history.history["loss"]) == 2
    assert float(model.optimizer.learning_rate) < 0.1 * 0.5 + 1e-9


# ------------------------------------------- values that pass and then give NaN
# (optimizer, the value, the variables' dtype, the message). Each was accepted and
# gave inf or NaN weights: checked at build, in the dtype the update computes in.
IN_DTYPE = [
    (lambda: ko.RMSProp(epsilon=1e-50), "float32", "`epsilon` cannot be used in float32"),
    (lambda: ko.Adam(epsilon=1e-300), "float32", "it is 0 there, below float32's smallest normal number"),
    (lambda: ko.Adam(epsilon=1e-50), "float16", "in float32, the dtype the update computes in for float16"),
    (
        lambda: ko.Adagrad(epsilon=0.0, initial_accumulator_value=1e-40),
        "float32",
        "`initial_accumulator_value` cannot be used in float32",
    ),
    (lambda: ko.Adam(weight_decay=1e39), "float32", "for float32 variables: it overflows to inf"),
    (lambda: ko.Adam(beta_2=1 - 1e-10), "float32", "it rounds to 1.0 there, outside [0, 1)"),
    (lambda: ko.RMSProp(rho=1 - 1e-9), "bfloat16", "`rho` cannot be used in float32"),
]


@pytest.mark.parametrize("make, dtype, message", IN_DTYPE)
def test_a_value_that_breaks_in_the_compute_dtype_is_refused_at_build(make, dtype, message):
    optimizer = make()
    variable = keras.Variable(np.ones(3, dtype), dtype=dtype)
    with pytest.raises(ValueError, match="Received: ") as error:
        optimizer.build([variable])
    assert message in str(error.value)
    assert not optimizer.built


def test_the_same_values_are_fine_in_float64():
    """1e-50 is a normal float64: the same epsilon trains float64 variables."""
    optimizer = ko.RMSProp(epsilon=1e-50)
    w = keras.Variable(np.ones(3), dtype="float64")
    optimizer.apply([tf.constant([0.0, 1.0, -1.0], tf.float64)], [w])
    assert np.isfinite(w.numpy()).all()


@pytest.mark.parametrize("value", [1e39, 1e-50])
def test_a_learning_rate_float32_cannot_hold_is_refused(value):
    """Keras keeps the learning rate in a float32 variable: 1e39 became inf, the weights NaN."""
    with pytest.raises(ValueError, match=r"`learning_rate` cannot be used in float32.*learning_rate=1e"):
        ko.SGD(learning_rate=value)
    optimizer = ko.SGD(learning_rate=0.1)
    with pytest.raises(ValueError, match=r"`learning_rate` cannot be used in float32"):
        optimizer.learning_rate = value
    np.testing.assert_allclose(float(optimizer.learning_rate), 0.1, rtol=1e-7)


# --------------------------------------- 0-d arrays and tensors for hyperparameters
ADAM = [(ko.Adam, "beta_1"), (ko.Adam, "beta_2"), (ko.Adam, "epsilon")]


@pytest.mark.parametrize(
    "cls, argument",
    [*ADAM, (ko.Momentum, "momentum"), (ko.RMSProp, "rho")],
)
@pytest.mark.parametrize("wrap", [np.array, tf.constant, np.float32], ids=["ndarray", "tf", "np.float32"])
def test_hyperparameters_accept_0d_arrays_and_tensors(cls, argument, wrap):
    """Keras documents "float or constant float tensor"; converted with float():
    tf.constant(0.5) is 0.5 exactly, tf.constant(0.9) is float32's 0.8999999761581421."""
    optimizer = cls(**{argument: wrap(0.5)})
    assert getattr(optimizer, argument) == 0.5 and type(getattr(optimizer, argument)) is float
    assert ko.Adam(beta_1=tf.constant(0.9)).beta_1 == float(np.float32(0.9))


def test_a_tensor_with_more_than_one_value_is_refused():
    with pytest.raises(TypeError, match=r"`beta_1` must be a float. Received: beta_1="):
        ko.Adam(beta_1=np.array([0.9, 0.99]))


# --------------------------------------------------- errors that name the argument
def test_state_of_a_variable_the_optimizer_does_not_own_says_so():
    optimizer = ko.Adam()
    mine = keras.Variable(np.ones(3), name="mine")
    optimizer.build([mine])
    other = keras.Variable(np.ones(3), name="other")
    for method in (optimizer.state, optimizer.effective_learning_rate, optimizer.initial_state_mask):
        with pytest.raises(ValueError, match=r"`variable` 'other' is not one of the 1 variables .*\(mine\)"):
            method(other)
        with pytest.raises(TypeError, match=r"`variable` must be one of the .*Received: variable=array"):
            method(np.ones(3))


@pytest.mark.parametrize(
    "value, error, message",
    [
        (-1.0, ValueError, "`learning_rate` must be a finite number in [0, inf). Received: learning_rate=-1"),
        ("x", TypeError, "`learning_rate` must be a float. Received: learning_rate='x'"),
        (np.ones(2), TypeError, "`learning_rate` must be a float."),
    ],
)
def test_effective_learning_rate_checks_its_learning_rate(value, error, message):
    optimizer = ko.Adam()
    w = keras.Variable(np.ones(3))
    optimizer.build([w])
    with pytest.raises(error) as info:
        optimizer.effective_learning_rate(w, learning_rate=value)
    assert message in str(info.value)
    rate = optimizer.effective_learning_rate(w, learning_rate=tf.constant(0.5))  # a 0-d tensor is fine
    np.testing.assert_allclose(rate, 0.5 / 1e-8)  # (no step yet: v = 0)
