"""Saved optimizer state: what loads, what resumes bit for bit, and what is refused.

Nothing is lost and nothing loads silently into the wrong place: a file loads and
resumes exactly, or raises a `ValueError` before the optimizer's state changes.
`fixtures/pre_record/` holds files written by keras_optlab 0.1.0 (commit 5c6d872,
`fixtures/make_fixtures.py`), before saved optimizers recorded their rule.
"""

import io
import warnings
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import keras_optlab as ko
from tests.fixtures.common import EPOCHS_SAVED, FIXTURES, Spec, build

PRE_RECORD = Path(__file__).resolve().parent / "fixtures" / "pre_record"
EPOCHS = EPOCHS_SAVED + 2


def _fit(model, spec, epochs, initial_epoch=0):
    model.fit(
        *spec.data(), batch_size=16, epochs=epochs, initial_epoch=initial_epoch, shuffle=False, verbose=0
    )
    return model


def _values(variables):
    return [keras.ops.convert_to_numpy(v) for v in variables]


def _assert_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def _saved_optimizer(path: Path, inner: bool = True) -> list:
    """The optimizer arrays in a saved file, read with h5py: in the order of
    `optimizer.variables`, the inner optimizer's under loss scaling (or, with `inner=False`,
    the `LossScaleOptimizer`'s, its own and then the inner one's)."""
    if path.suffix == ".keras":
        source = io.BytesIO(zipfile.ZipFile(path).read("model.weights.h5"))
    else:
        source = path
    with h5py.File(source, "r") as f:
        scaled = inner and "inner_optimizer" in f["optimizer"]  # under loss scaling
        group = f["optimizer/inner_optimizer/vars" if scaled else "optimizer/vars"]
        return [np.asarray(group[str(k)]) for k in range(len(group))]


def _given_the_files_numbers(spec: Spec, path: Path, loaded, **overrides):
    """The fixture's model never saved nor loaded, given the numbers of the file: the weights
    as Keras loaded them into `loaded`, and every optimizer variable (the loss scale's too)
    read from the file with h5py and assigned. What a resumed model must match: not this
    machine's own uninterrupted training, whose first epochs may round differently from
    those of the machine that wrote the file (one ulp in a few elements on another CPU)."""
    model = build(spec, **overrides)
    model.optimizer.build(model.trainable_variables)
    model.set_weights(loaded.get_weights())
    saved = _saved_optimizer(path, inner=False)
    assert len(saved) == len(model.optimizer.variables)
    for variable, value in zip(model.optimizer.variables, saved, strict=True):
        variable.assign(value)
    return model


def _load(spec: Spec, path: Path, **overrides):
    """The file's model and optimizer, as a user loads it: `load_model` for a `.keras`
    file, the fixture's compiled model, its optimizer built, for weights."""
    if path.suffix == ".keras":
        return keras.saving.load_model(path)
    model = build(spec, **overrides)
    model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    return model


@pytest.fixture(autouse=True)
def _float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def _inner(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


# ------------------------------------------------- files of keras_optlab 0.1.0
LOADABLE = [name for name in FIXTURES if name not in ("adam-flat-exclude", "adam-exclude")]
#: Each rule's slots, each layout and format, and loss scaling (resuming from a
#: loaded state is tested for every rule in test_saving.py).
RESUMED = ["rmsprop-centered-momentum", "adam-amsgrad", "momentum-flat", "adam-flat-weights"]
RESUMED += ["adam-mixed-weights"]


def _load_0_1_0(name):
    spec = FIXTURES[name]
    path = next(PRE_RECORD.glob(f"{name}.*"))
    with pytest.warns(UserWarning, match="carries no record of its rule") as record:
        model = _load(spec, path)
    assert len([w for w in record if "no record" in str(w.message)]) == 1
    return spec, path, model


@pytest.mark.parametrize("name", LOADABLE)
def test_a_file_of_0_1_0_loads_exactly_with_one_warning(name):
    spec, path, model = _load_0_1_0(name)
    optimizer = _inner(model.optimizer)
    assert type(optimizer).__name__ == spec.cls and int(optimizer.iterations) == 8
    _assert_equal(_values(optimizer.variables), _saved_optimizer(path))


@pytest.mark.parametrize("name", RESUMED)
def test_a_file_of_0_1_0_resumes_bit_for_bit(name):
    """Training on from the loaded file is training on from the file's numbers."""
    spec, path, model = _load_0_1_0(name)
    continued = _fit(_given_the_files_numbers(spec, path, model), spec, EPOCHS, initial_epoch=EPOCHS_SAVED)
    resumed = _fit(model, spec, EPOCHS, initial_epoch=EPOCHS_SAVED)
    _assert_equal(resumed.get_weights(), continued.get_weights())
    _assert_equal(_values(resumed.optimizer.variables), _values(continued.optimizer.variables))


def test_a_file_of_0_1_0_that_needed_an_exclusion_says_what_is_missing():
    """keras_optlab 0.1.0 saved flat slots split by weight-decay class, but not the
    exclusion that split them: loading it restarted from zero with only Keras' warning."""
    path = PRE_RECORD / "adam-flat-exclude.keras"
    with pytest.raises(ValueError, match=r"exclude_from_weight_decay") as error:
        keras.saving.load_model(path)
    assert "holds 6 variables" in str(error.value) and "has 4" in str(error.value)
    # Given the exclusion again, as the message says, the same file loads and resumes.
    _assert_resumes_with_the_exclusion_given_again(FIXTURES["adam-flat-exclude"], path)


def test_a_file_of_0_1_0_with_an_exclusion_per_variable_warns_that_it_is_not_recorded():
    """Per variable, the shapes do not show the exclusion: the warning says to give it again."""
    path = PRE_RECORD / "adam-exclude.keras"
    with pytest.warns(UserWarning, match="exclusion from weight decay.*give it again"):
        keras.saving.load_model(path)
    _assert_resumes_with_the_exclusion_given_again(FIXTURES["adam-exclude"], path)


def _assert_resumes_with_the_exclusion_given_again(spec, path):
    model = build(spec)  # the fixture's optimizer, with its exclusion
    model.optimizer.build(model.trainable_variables)
    with pytest.warns(UserWarning, match="carries no record"):
        model.load_weights(path)
    _assert_equal(_values(model.optimizer.variables), _saved_optimizer(path))
    continued = _fit(_given_the_files_numbers(spec, path, model), spec, EPOCHS, initial_epoch=EPOCHS_SAVED)
    resumed = _fit(model, spec, EPOCHS, initial_epoch=EPOCHS_SAVED)
    _assert_equal(resumed.get_weights(), continued.get_weights())


# ------------------------------------------------------------- new files
@pytest.mark.parametrize("flat", [False, True], ids=["per variable", "flat slots"])
def test_an_exclusion_from_weight_decay_is_saved_and_resumes_bit_for_bit(flat, tmp_path):
    """The exclusion is in the config: the reloaded optimizer decays the same variables
    (and, with flat slots, has the same buffers: 0.1.0 restarted from zero here)."""
    spec = Spec("Adam", {"weight_decay": 0.05, "flat_slots": flat}, exclude=("bias",))
    half = _fit(build(spec), spec, EPOCHS_SAVED)
    half.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    assert restored.optimizer.get_config()["exclude_from_weight_decay"] == {
        "var_names": ["bias"],
        "var_indices": [],
    }
    _assert_equal(_values(restored.optimizer.variables), _values(half.optimizer.variables))
    resumed = _fit(restored, spec, EPOCHS, initial_epoch=EPOCHS_SAVED)
    _assert_equal(resumed.get_weights(), _fit(build(spec), spec, EPOCHS).get_weights())


def test_an_exclusion_by_variables_is_saved_by_their_positions(tmp_path):
    """(Their paths change: `net/dense_1/bias` is saved, `dense_1/bias` loaded.)"""
    spec = Spec("SGD", {"weight_decay": 0.5})
    model = build(spec)
    model.optimizer.exclude_from_weight_decay(var_list=[model.layers[1].bias])
    model.optimizer.build(model.trainable_variables)
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    exclusion = restored.optimizer.get_config()["exclude_from_weight_decay"]
    assert exclusion == {"var_names": [], "var_indices": [3]}
    decays = [restored.optimizer._use_weight_decay(v) for v in restored.trainable_variables]
    assert decays == [True, True, True, False]


# (saved, loaded into, what the message says the file holds, and what this optimizer keeps)
MISMATCHES = [
    (Spec("Momentum", {}), Spec("Adagrad", {}), "Momentum (slots: velocity", "Adagrad (slots: cache)"),
    (
        Spec("Adam", {}),
        Spec("RMSProp", {"centered": True}),
        "Adam (slots: m, v)",
        "RMSProp (slots: cache, mean_gradient)",
    ),
    (Spec("Adam", {"amsgrad": True}), Spec("Adam", {}), "slots: m, v, v_max", "Adam (slots: m, v)"),
    (
        Spec("Momentum", {}),
        Spec("Momentum", {"lr_in_momentum": False}),
        "lr_in_momentum=True",
        "lr_in_momentum=False",
    ),
    (Spec("Momentum", {}), Spec("NAG", {}), "keras_optlab>Momentum", "keras_optlab>NAG"),
    (
        Spec("Adam", {"amsgrad": True}),
        Spec("Adam", {"amsgrad": True, "amsgrad_max": "corrected"}),
        "amsgrad_max='raw'",
        "amsgrad_max='corrected'",
    ),
]


@pytest.mark.parametrize(
    "saved, into, holds, keeps",
    MISMATCHES,
    ids=[f"{m[0].cls}{m[0].kwargs}-{m[1].cls}{m[1].kwargs}" for m in MISMATCHES],
)
def test_a_file_of_another_rule_is_refused_and_the_state_left_as_it_was(saved, into, holds, keeps, tmp_path):
    _fit(build(saved), saved, 1).save_weights(tmp_path / "w.weights.h5")
    model = _fit(build(into), into, 1)  # a state of its own, not the initial one
    before = _values(model.optimizer.variables)
    with pytest.raises(ValueError, match="cannot be loaded into this") as error:
        model.load_weights(tmp_path / "w.weights.h5")
    file_part, ours = str(error.value).split("this optimizer keeps")
    assert holds in file_part.split("the file holds")[1] and keeps in ours
    _assert_equal(_values(model.optimizer.variables), before)


def test_a_file_of_0_1_0_of_another_rule_loads_by_its_shapes_with_the_warning():
    """As before (the documented exception): without a record, shapes are all there is."""
    spec = Spec("Adagrad", {"weight_decay": 0.01}, fmt="weights")
    path = PRE_RECORD / "momentum-weights.weights.h5"
    with pytest.warns(UserWarning, match="carries no record"):
        model = _load(spec, path)
    _assert_equal(_values(model.optimizer.variables), _saved_optimizer(path))


def test_the_record_is_invisible_to_keras_count_of_variables(tmp_path):
    """Keras' own SGD with momentum keeps the same variables in the same order as our
    Momentum in Keras' convention: it loads our file without a warning."""
    spec = Spec("Momentum", ko.Momentum.CONVENTIONS["keras"])
    model = _fit(build(spec), spec, 1)
    model.save_weights(tmp_path / "w.weights.h5")
    with h5py.File(tmp_path / "w.weights.h5", "r") as f:
        keys = sorted(f["optimizer/vars"].keys(), key=int)
        assert keys == [str(k) for k in range(len(model.optimizer.variables))]
        assert "keras_optlab" in f["optimizer/vars"].attrs
    theirs = build(spec)
    theirs.compile(optimizer=keras.optimizers.SGD(momentum=0.9), loss="mse")
    theirs.optimizer.build(theirs.trainable_variables)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        theirs.load_weights(tmp_path / "w.weights.h5")
    _assert_equal(_values(theirs.optimizer.variables), _values(model.optimizer.variables))


@pytest.mark.parametrize("saved_flat", [False, True], ids=["per variable", "flat slots"])
def test_loss_scaling_round_trips_in_one_layout_and_is_refused_across_layouts(saved_flat, tmp_path):
    """Keras' LossScaleOptimizer loads its loss scale only where the variables count the
    same: across slot layouts it kept its initial scale (32768 where 32 was saved)."""
    spec = Spec("Adam", {"flat_slots": saved_flat}, fmt="weights", mixed=True)
    model = build(spec)
    x, y = spec.data()
    model.fit(x, y * 1e4, batch_size=16, epochs=2, shuffle=False, verbose=0)  # overflows halve the scale
    assert float(model.optimizer.dynamic_scale) < 2**15
    model.save_weights(tmp_path / "w.weights.h5")
    same = build(spec)
    same.optimizer.build(same.trainable_variables)
    same.load_weights(tmp_path / "w.weights.h5")
    _assert_equal(_values(same.optimizer.variables), _values(model.optimizer.variables))
    other = build(spec, flat_slots=not saved_flat)
    other.optimizer.build(other.trainable_variables)
    before = _values(other.optimizer.variables)
    with pytest.raises(ValueError, match="inside a LossScaleOptimizer cannot load state saved with"):
        other.load_weights(tmp_path / "w.weights.h5")
    _assert_equal(_values(other.optimizer.variables), before)


def test_weights_loaded_before_the_optimizer_is_built_are_loaded_when_it_is(tmp_path):
    """Keras skipped them with a warning, and training restarted from step 0."""
    spec = Spec("Adam", {"weight_decay": 0.01}, fmt="weights")
    half = _fit(build(spec), spec, EPOCHS_SAVED)
    half.save_weights(tmp_path / "w.weights.h5")
    fresh = build(spec)
    fresh.load_weights(tmp_path / "w.weights.h5")  # fit builds the optimizer
    resumed = _fit(fresh, spec, EPOCHS, initial_epoch=EPOCHS_SAVED)
    uninterrupted = _fit(build(spec), spec, EPOCHS)
    assert int(resumed.optimizer.iterations) == int(uninterrupted.optimizer.iterations) == 16
    _assert_equal(resumed.get_weights(), uninterrupted.get_weights())


def test_a_model_saved_before_its_first_step_loads_and_trains(tmp_path):
    spec = Spec("RMSProp", {"momentum": 0.9})
    build(spec).save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    _assert_equal(_fit(restored, spec, 1).get_weights(), _fit(build(spec), spec, 1).get_weights())
