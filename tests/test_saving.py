"""Saved and restored, training resumes bit for bit where uninterrupted training ends."""

import keras
import numpy as np
import pytest

import keras_optlab as ko
from tests.cases import RULES

EPOCHS = 4


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 6)).astype("float32")
    return x, (x @ rng.normal(size=(6, 2))).astype("float32")


def _model(optimizer):
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)]
    )
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _fit(model, epochs, initial_epoch=0, callbacks=()):
    x, y = _data()
    model.fit(
        x,
        y,
        batch_size=16,
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    return model


def _uninterrupted(cls):
    return _fit(_model(cls.like("pytorch", weight_decay=0.01)), EPOCHS)


def _assert_same(a, b):
    for x, y in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a.optimizer.variables, b.optimizer.variables, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


@pytest.mark.parametrize("cls", RULES, ids=lambda c: c.__name__)
def test_save_and_load_model_resumes_bit_for_bit(cls, tmp_path):
    half = _fit(_model(cls.like("pytorch", weight_decay=0.01)), EPOCHS // 2)
    half.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    assert type(restored.optimizer) is cls
    assert restored.optimizer.get_config() == half.optimizer.get_config()
    _assert_same(half, restored)
    _assert_same(_fit(restored, EPOCHS, initial_epoch=EPOCHS // 2), _uninterrupted(cls))


@pytest.mark.parametrize("cls", [ko.Adam, ko.RMSProp])
def test_save_weights_and_load_weights_resume(cls, tmp_path):
    half = _fit(_model(cls.like("pytorch", weight_decay=0.01)), EPOCHS // 2)
    half.save_weights(tmp_path / "w.weights.h5")
    fresh = _model(cls.like("pytorch", weight_decay=0.01))
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(tmp_path / "w.weights.h5")
    _assert_same(_fit(fresh, EPOCHS, initial_epoch=EPOCHS // 2), _uninterrupted(cls))


@pytest.mark.parametrize("cls", [ko.Momentum, ko.Adam])
def test_model_checkpoint_resumes(cls, tmp_path):
    path = str(tmp_path / "epoch{epoch}.keras")
    _fit(
        _model(cls.like("pytorch", weight_decay=0.01)),
        EPOCHS,
        callbacks=[keras.callbacks.ModelCheckpoint(path)],
    )
    restored = keras.saving.load_model(tmp_path / f"epoch{EPOCHS // 2}.keras")
    _assert_same(_fit(restored, EPOCHS, initial_epoch=EPOCHS // 2), _uninterrupted(cls))


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == EPOCHS // 2 - 1:
            raise RuntimeError("interrupted")


@pytest.mark.parametrize("cls", [ko.Adagrad, ko.Adam])
def test_backup_and_restore_resumes(cls, tmp_path):
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    model = _model(cls.like("pytorch", weight_decay=0.01))
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(model, EPOCHS, callbacks=[backup, _Interrupt()])
    resumed = _fit(_model(cls.like("pytorch", weight_decay=0.01)), EPOCHS, callbacks=[backup])
    _assert_same(resumed, _uninterrupted(cls))


def test_use_ema_is_the_documented_exception(tmp_path):
    """With use_ema Keras overwrites the weights with their averages at the end of
    each fit, so two fits are not one longer fit; save and load still round-trip."""
    two = _fit(_fit(_model(ko.Adam(use_ema=True)), 1), 2, initial_epoch=1)
    one = _fit(_model(ko.Adam(use_ema=True)), 2)
    assert not all(np.array_equal(a, b) for a, b in zip(one.get_weights(), two.get_weights(), strict=True))
    one.save(tmp_path / "m.keras")
    _assert_same(one, keras.saving.load_model(tmp_path / "m.keras"))
