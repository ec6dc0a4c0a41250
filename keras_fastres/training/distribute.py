"""One training loop for one device, several devices and several machines.

Why not `model.fit()`: under `MultiWorkerMirroredStrategy`, Keras 3's fit() fails
(keras-team/keras#20585): before the first step it reduces a distributed input batch to build
the model symbolically, and every step it reduces the scalar logs with `axis=0`; both raise.
Using fit() for one device and a custom loop for clusters would make the cluster path the
untested one. So every strategy runs this loop: `strategy.run` of a compiled training step on
a distributed dataset, driving the same Keras callbacks fit() would (`CallbackList`: progress
bar, schedule, timer, history, TensorBoard, the non-finite stop). Checked here: two localhost
workers end with identical weights, and two logical CPUs match one device.
"""

import json
import os
import signal
import subprocess
import sys

import keras
import tensorflow as tf

STRATEGIES = ("auto", "one-device", "mirrored", "multi-worker")


def make_strategy(name="auto", cpu_replicas=None, cluster_timeout=300.0):
    """A tf.distribute strategy by name.

    "auto": MirroredStrategy over all local GPUs when there are several, else the default
    (one device). "one-device": the first GPU, or the CPU. "mirrored": all local GPUs, or with
    `cpu_replicas` that many logical CPU devices (to try data parallelism without GPUs).
    "multi-worker": MultiWorkerMirroredStrategy, configured by the TF_CONFIG variable; it
    waits at most `cluster_timeout` seconds for every worker to join (`_join_cluster`).
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}.")
    if name == "multi-worker":
        check_tf_config(os.environ.get("TF_CONFIG"))
    if cpu_replicas:
        if name != "mirrored":
            raise ValueError("cpu_replicas is for strategy 'mirrored' only.")
        _split_cpu(cpu_replicas)
    if name == "multi-worker":  # before anything else starts TensorFlow's runtime
        return _join_cluster(cluster_timeout)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored":
        devices = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "one-device" or len(gpus) < 2:
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    return tf.distribute.MirroredStrategy()


def _split_cpu(replicas):
    """The CPU as `replicas` logical devices. TensorFlow fixes its devices when its runtime
    starts: a process (a notebook, a second run) that already has that many keeps them, and one
    that has another number gets a ValueError saying so."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(cpu)
    if configured is not None and len(configured) == replicas:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError:  # "Virtual devices cannot be modified after being initialized"
        have = len(tf.config.list_logical_devices("CPU"))
        raise ValueError(f"cpu_replicas={replicas}, but TensorFlow already runs on {have} CPU "
                         f"device(s) in this process and cannot change that; start a new "
                         f"process for another number.") from None


TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


def check_tf_config(text):
    """The cluster's addresses from the TF_CONFIG variable's `text`, or a ValueError naming
    TF_CONFIG and what is wrong in it."""
    def wrong(reason):
        return ValueError(f"TF_CONFIG {reason}; it should look like {TF_CONFIG_EXAMPLE}.")
    if not text:
        raise ValueError(f"strategy 'multi-worker' needs the TF_CONFIG environment variable, "
                         f"e.g. {TF_CONFIG_EXAMPLE}.")
    try:
        config = json.loads(text)
    except ValueError as error:
        raise wrong(f"is not JSON ({error})") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(jobs, list) and jobs and all(isinstance(a, str) and ":" in a for a in jobs)
            for jobs in cluster.values()):
        raise wrong('needs "cluster": a list of "host:port" addresses for each task type')
    task = config.get("task")
    if not isinstance(task, dict) or task.get("type") not in cluster or not (
            isinstance(task.get("index"), int) and 0 <= task["index"] < len(
                cluster[task["type"]])):
        raise wrong(f'needs "task": a type among {sorted(cluster)} and its index in that list')
    return [address for jobs in cluster.values() for address in jobs]


# Run beside a worker that joins its cluster: TensorFlow blocks inside the strategy's
# constructor, holding the GIL and deaf to Python's signal handlers, until every worker has
# started. This process (no TensorFlow in it) waits for word that the join is done (its stdin
# closing, also when the worker dies), and if none comes in time it says so and stops the worker.
# SIGTERM or SIGHUP (a batch scheduler or `timeout` signals the whole process group; the worker
# cannot answer them while it waits) stop the worker too, with a line that says why. They are
# blocked from its start (the mask it inherits) until its handlers are in place: none is lost.
WATCHDOG = """
import os, select, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to answer
worker, timeout, message, stopped = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
def stop(text):
    print(text, file=sys.stderr, flush=True)
    os.kill(worker, signal.SIGKILL)
    sys.exit(0)
for number in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(number, lambda signum, frame: stop(stopped.format(signal.Signals(signum).name)))
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGHUP})
if not select.select([sys.stdin], [], [], timeout)[0]:
    stop(message)
for number in (signal.SIGTERM, signal.SIGHUP):  # joined: the worker answers them now
    signal.signal(number, signal.SIG_IGN)
"""
STOPPING = (signal.SIGTERM, signal.SIGHUP)


def _join_cluster(timeout):
    """MultiWorkerMirroredStrategy, waiting at most `timeout` seconds for every worker of
    TF_CONFIG to start: after that a watchdog process prints one line and stops this one
    (exit status 137). Ctrl-C stops the wait at once; SIGTERM or SIGHUP to the process group
    stops it through the watchdog (exit status 137, one line that names the signal)."""
    addresses = ", ".join(check_tf_config(os.environ.get("TF_CONFIG")))
    message = (f"error: The cluster did not assemble within {timeout:g} s: not every worker of "
               f"TF_CONFIG ({addresses}) started. Start the same command on each of them (or "
               f"raise --cluster-timeout).")
    stopped = (f"error: Stopped by {{}} while waiting for the cluster (TF_CONFIG: {addresses}) "
               f"to assemble; nothing was trained.")
    # Python's handlers cannot run during the join: Ctrl-C stops it by default, and SIGTERM and
    # SIGHUP are the watchdog's to answer (caught here by a handler that does nothing: an
    # ignored signal would stay ignored in the watchdog, a caught one is reset to its default).
    handlers = {number: signal.signal(number, lambda signum, frame: None) for number in STOPPING}
    handlers[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_DFL)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING)  # inherited by the watchdog
    try:
        watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()),
                                     str(timeout), message, stopped], stdin=subprocess.PIPE)
    except BaseException:
        for number, handler in handlers.items():
            signal.signal(number, handler)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
        if watchdog.stdin:
            watchdog.stdin.close()
        watchdog.wait()


def agree_on_seed(strategy, seed):
    """The seed of replica 0 on every worker of a MultiWorkerMirroredStrategy cluster, so that
    all workers shuffle and augment alike; `seed` itself under any other strategy."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return seed

    @tf.function
    def broadcast():
        def own_value():
            first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
            return tf.where(first, tf.constant(seed, tf.int64), tf.constant(0, tf.int64))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(own_value), axis=None)
    return int(broadcast())


def is_chief(strategy):
    """True on the one process that writes outputs: the only one, or the cluster's chief
    (task "chief", or worker 0 when the cluster has no chief task)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


class Trainer:
    """The compiled distributed steps of one model: train on a dataset epoch by epoch with
    callbacks, and evaluate. The model must have been built and compiled under
    `strategy.scope()`; its optimizer and its loss (a sparse or a categorical cross-entropy)
    are used. The loss minimised is that cross-entropy plus the layers' weight-decay penalties;
    the "loss" reported is the mean cross-entropy alone, with "accuracy"."""

    def __init__(self, model, strategy, jit_compile=False):
        self.model, self.strategy = model, strategy
        one_hot = isinstance(model.loss, keras.losses.CategoricalCrossentropy)
        if not one_hot and not isinstance(model.loss, keras.losses.SparseCategoricalCrossentropy):
            raise ValueError(f"Trainer needs a model compiled with a cross-entropy loss "
                             f"object; got {model.loss!r}.")
        self.per_example_loss = type(model.loss)(reduction=None)
        accuracy_class = (keras.metrics.CategoricalAccuracy if one_hot
                          else keras.metrics.SparseCategoricalAccuracy)
        with strategy.scope():
            self.loss = keras.metrics.Mean(name="loss")
            self.accuracy = accuracy_class(name="accuracy")
            model.optimizer.build(model.trainable_variables)
        # Per replica: one step on its share of a batch (plain, and compiled for strategy.run).
        self._compiled_step = tf.function(self._step, jit_compile=jit_compile)
        self._compiled_test_step = tf.function(self._test_step, jit_compile=jit_compile)
        # Per call: several steps, their batches from tf.data or computed on the device.
        self._device_steps = tf.function(self._device_steps_fn, jit_compile=jit_compile)

    def _step(self, images, labels):
        model = self.model
        images = tf.cast(images, tf.float32)  # the pipelines deliver raw uint8 pixels
        with tf.GradientTape() as tape:
            predictions = model(images, training=True)
            per_example = self.per_example_loss(labels, predictions)
            # Averaged over the global batch; weight decay counted once across replicas.
            loss = tf.nn.compute_average_loss(per_example)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = model.optimizer.scale_loss(loss)  # loss scaling under mixed_float16
        gradients = tape.gradient(scaled, model.trainable_variables)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        self.loss.update_state(per_example)
        self.accuracy.update_state(labels, predictions)

    def _test_step(self, images, labels):
        predictions = self.model(tf.cast(images, tf.float32), training=False)
        self.loss.update_state(self.per_example_loss(labels, predictions))
        self.accuracy.update_state(labels, predictions)

    @tf.function
    def train_steps(self, iterator, steps):
        """`steps` training steps in one call, on batches from a distributed iterator."""
        for _ in tf.range(steps):
            self.strategy.run(self._compiled_step, args=next(iterator))

    def _device_steps_fn(self, first, steps, order, key, arrays, train_data, size):
        """`steps` training steps in one call from global batch `first` on, each replica
        computing its share of every batch on its own device from `arrays` (the training
        split, copied there once): no input pipeline at all, and with XLA one compiled
        program (crop, flip, forward, backward, update, several times)."""
        def step(batch, order, key, pixels, labels):
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            # The plain step, not its tf.function: a tf.function nested in strategy.run
            # cannot hold the replicas' synchronisation points (synchronised BN, gradients).
            self._step(*train_data.share(
                batch, order, key, replica, self.strategy.num_replicas_in_sync, pixels, labels,
                size))
        for index in tf.range(steps):
            self.strategy.run(step, args=(first + index, order, key, *arrays))

    @tf.function
    def _distributed_test_step(self, batch):
        self.strategy.run(self._compiled_test_step, args=batch)

    def _logs(self):
        return {"loss": float(self.loss.result()), "accuracy": float(self.accuracy.result())}

    def _reset(self):
        self.loss.reset_state()
        self.accuracy.reset_state()

    def evaluate(self, dataset, callbacks=None):
        """{"loss", "accuracy"} over `dataset`."""
        self._reset()
        if callbacks:
            callbacks.on_test_begin()
        for batch in self.strategy.experimental_distribute_dataset(dataset):
            self._distributed_test_step(batch)
        logs = self._logs()
        if callbacks:
            callbacks.on_test_end(logs)
        return logs

    def epoch_batches(self, train_data, epoch):
        """Epoch `epoch` of a `data.TrainingData`, distributed: each input pipeline (one per
        worker) builds only its own replicas' shares of every global batch."""
        replicas = self.strategy.num_replicas_in_sync

        def shares(context):
            per_pipeline = replicas // context.num_input_pipelines
            return train_data.epoch(epoch, context.input_pipeline_id * per_pipeline,
                                    per_pipeline, replicas)
        return self.strategy.distribute_datasets_from_function(shares)

    def host_feed(self, train_data, steps_per_execution):
        """The calls of an epoch fed from tf.data: `calls(epoch)` yields (first batch, steps,
        run) for each call, `run()` training those steps."""
        steps_per_epoch = train_data.steps_per_epoch

        def calls(epoch):
            iterator = iter(self.epoch_batches(train_data, epoch))
            for first in range(0, steps_per_epoch, steps_per_execution):
                steps = min(steps_per_execution, steps_per_epoch - first)
                yield first, steps, lambda steps=steps: self.train_steps(
                    iterator, tf.constant(steps))
        return calls

    def device_feed(self, train_data, steps_per_execution):
        """As `host_feed`, with the training split copied to each replica's device once and
        every batch computed there, with the same draws. Every batch of a call has one static
        size (XLA needs it), so a shorter last batch gets a call of its own."""
        arrays = tuple(self.strategy.experimental_distribute_values_from_function(
            lambda context, array=array: tf.identity(array))
            for array in train_data.device_arrays())
        batch_size, images = train_data.batch_size, len(train_data.labels)
        full = images // batch_size
        sizes = [(first, min(steps_per_execution, full - first), batch_size)
                 for first in range(0, full, steps_per_execution)]
        sizes += [(full, 1, images - full * batch_size)] if full < train_data.steps_per_epoch \
            else []

        def calls(epoch):
            order, key = train_data.epoch_order(epoch)
            for first, steps, size in sizes:
                yield first, steps, lambda first=first, steps=steps, size=size: \
                    self._device_steps(tf.constant(first), tf.constant(steps), order, key,
                                       arrays, train_data, size)
        return calls

    def fit(self, train_data, test_data, epochs, callbacks, initial_epoch=0, verbose=1,
            steps_per_execution=1, data_placement="host"):
        """Epochs `initial_epoch` .. `epochs - 1` of `train_data` (a `data.TrainingData`),
        evaluating on `test_data` after each, with fit()'s callback protocol; returns the last
        epoch's logs: loss, accuracy, test_loss, test_error.

        `steps_per_execution` steps run in one compiled call (the last call of an epoch runs
        what remains), and the callbacks see each call as one batch ending at its last step:
        the metrics are read back to the host once per call and once per epoch.
        `data_placement` "host" feeds batches from tf.data (`host_feed`); "device" copies the
        training split to each replica's device once and computes every batch there
        (`device_feed`), with the same draws, so the images and the trained weights are the
        same bit for bit."""
        callbacks = keras.callbacks.CallbackList(
            callbacks, add_history=True, add_progbar=verbose != 0, verbose=verbose,
            epochs=epochs, steps=train_data.steps_per_epoch, model=self.model)
        model = self.model
        model.stop_training = False
        feed = {"host": self.host_feed, "device": self.device_feed}[data_placement](
            train_data, steps_per_execution)
        callbacks.on_train_begin()
        epoch_logs = {}
        for epoch in range(initial_epoch, epochs):
            self._reset()
            callbacks.on_epoch_begin(epoch)
            for first, steps, run in feed(epoch):
                callbacks.on_train_batch_begin(first)
                run()
                callbacks.on_train_batch_end(first + steps - 1, self._logs())
                if model.stop_training:
                    break
            epoch_logs = self._logs()
            test_logs = self.evaluate(test_data, callbacks)
            # Named as in history.csv and metrics.json, on the console too.
            epoch_logs.update(test_loss=test_logs["loss"], test_error=1.0 - test_logs["accuracy"])
            callbacks.on_epoch_end(epoch, epoch_logs)
            if model.stop_training:
                break
        callbacks.on_train_end(epoch_logs)
        return epoch_logs
