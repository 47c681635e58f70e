"""Bad input for every argument of every optimizer: a clear error, never silence."""

import math

import keras
import numpy as np
import pytest

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
