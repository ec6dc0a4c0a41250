"""What runs on which Keras backend: the models everywhere (test_blocks, test_models and
test_batch_norm run under JAX and PyTorch too, in .ci/run); the training recipes and the
SavedModel export on TensorFlow only, saying so in one line elsewhere."""

import keras
import numpy as np
import pytest

from keras_fastres import FastResNet, export_saved_model
from keras_fastres.commands.train import main
from keras_fastres.training.config import TrainConfig

pytestmark = pytest.mark.skipif(keras.backend.backend() == "tensorflow",
                                reason="checks the other backends; .ci/run runs it under each")


def test_a_short_fit_trains_on_this_backend():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (32, 32, 32, 3)).astype("float32")
    labels = np.arange(32) % 2  # two easy classes: a bright and a dark half
    images[labels == 1] = np.clip(images[labels == 1] + 80, 0, 255)
    keras.utils.set_random_seed(0)
    model = FastResNet(8, num_classes=2)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(images, labels, batch_size=8, epochs=6, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_recipes_refuse_in_one_line(capsys):
    code = main(TrainConfig(), ["--synthetic", "--depth", "8", "--epochs", "1"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert f"needs Keras's TensorFlow backend, and KERAS_BACKEND selects " \
           f"'{keras.backend.backend()}'" in error


def test_export_refuses_naming_the_backend(tmp_path):
    with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow"):
        export_saved_model(FastResNet(8), tmp_path / "export")
    assert not (tmp_path / "export").exists()
