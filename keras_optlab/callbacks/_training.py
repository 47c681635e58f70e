"""What the diagnostics read of the training around the optimizer: the variables, the
strategy and worker, the learning rate of a step, the iterations a batch will take, the
gradient record they ask a keras_optlab optimizer for, and the HParams of a run."""

from __future__ import annotations

import keras
from keras import ops

from keras_optlab.callbacks._compiled import backend, to_numpy
from keras_optlab.callbacks._readers import class_name, unwrap
from keras_optlab.optimizers import OptlabOptimizer


def variables_read(model, optimizer) -> list:
    """The variables the statistics read: the model's trainable ones and the optimizers'."""
    out, seen = [], set()
    for v in [*model.trainable_variables, *model.optimizer.variables, *optimizer.variables]:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def ask_for_gradient_record(model, optimizer) -> bool:
    """Asks a keras_optlab optimizer on TensorFlow to record its gradient norms (for the
    clipping advisor and the noise scale; `_record.py`); True where it does. A train
    function traced before the record was asked for would record nothing: it is made
    anew (Keras traces it again at its first call). The optimizer goes on recording."""
    if not isinstance(optimizer, OptlabOptimizer) or backend() != "tensorflow":
        return False
    if optimizer.gradient_record is None:
        traced = optimizer.built  # a train step ran (and was traced) without recording
        optimizer.record_gradient_norms()
        if traced:
            model.make_train_function(force=True)
    return True


def records_no_gradient_norms(optimizer) -> str:
    """What `gradient_norms=True` says where the optimizer cannot record them."""
    return (
        f"OptimizerDiagnostics(gradient_norms=True): {class_name(optimizer)} on the {backend()} "
        "backend records no gradient norms (keras_optlab optimizers on TensorFlow do), so this fit has no "
        "clipping advisor and no noise scale; the rest is logged."
    )


def lr_is_callable(optimizer) -> bool:
    """A learning rate given as a plain callable (not a schedule, not a number)."""
    lr = getattr(optimizer, "_learning_rate", None)
    schedule = keras.optimizers.schedules.LearningRateSchedule
    return callable(lr) and not isinstance(lr, (schedule, keras.Variable))


def under_strategy(model) -> bool:
    if backend() != "tensorflow":
        return False
    import tensorflow as tf

    strategy = getattr(model, "distribute_strategy", None)
    return strategy is not None and type(strategy) is not type(tf.distribute.get_strategy())


def hparams(optimizer) -> dict:
    config = {"optimizer": type(unwrap(optimizer)).__name__}
    for key, value in unwrap(optimizer).get_config().items():
        if isinstance(value, (bool, int, float, str)) and key != "name":
            config[key] = value
        elif isinstance(value, dict):  # a schedule: its class name
            config[key] = str(value.get("class_name", value))
    return config


def iterations_after_batch(optimizer, iterations, steps_per_execution) -> int:
    """`optimizer.iterations` after a batch of `steps_per_execution` steps (at most: the
    last execution of an epoch may be shorter). With `gradient_accumulation_steps`,
    Keras counts an optimizer step every that many batches, from its raw counter."""
    accumulation = getattr(optimizer, "gradient_accumulation_steps", None)
    raw = getattr(optimizer, "_iterations", None)
    if not accumulation or raw is None:
        return iterations + steps_per_execution
    return (int(to_numpy(raw)) + steps_per_execution) // accumulation


def learning_rate_of_last_step(optimizer, iterations, read_before):
    """The learning rate of the last step of a window of several steps (one execution
    under `steps_per_execution`): a schedule evaluated where Keras evaluated it for that
    step (at the raw iteration count before it, `iterations * gradient_accumulation_steps
    - 1`); any other learning rate cannot change inside an execution, so the value read
    before the window."""
    schedule = getattr(optimizer, "_learning_rate", None)
    if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return read_before
    accumulation = getattr(optimizer, "gradient_accumulation_steps", None) or 1
    return schedule(ops.cast(iterations, "int64") * accumulation - 1)


def is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type or task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and not has_chief
