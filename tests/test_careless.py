"""Issue 27's third round of careless and hostile inputs, the cases outside the image folder
(which tests/test_folder_cache.py covers): a zip-bomb .keras, image paths that are no regular
files, a comparison whose plot cannot be written, a benchmark report on a full disk, and a
fine-tune onto other class names."""

import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from keras_fastres.errors import DamagedFile


def test_a_zip_bomb_keras_file_is_refused_before_it_expands(tmp_path):
    from keras_fastres import FastResNet, load_model
    from keras_fastres.models import MAX_JSON_BYTES

    real = tmp_path / "model.keras"
    FastResNet(8).save(real)
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(real) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for member in source.infolist():
            content = source.read(member)
            if member.filename == "config.json":
                content += b" " * (MAX_JSON_BYTES + 1)  # valid JSON, 64 MiB of blanks
            out.writestr(member.filename, content)
    assert bomb.stat().st_size < 2 ** 20  # what arrives is small
    with pytest.raises(DamagedFile, match=r"holds config\.json, declared 67,10\d,\d{3} bytes "
                                          r"\([\d,]+ compressed\).*a zip bomb\?\); not loaded"):
        load_model(bomb)
    assert load_model(real).count_params() == FastResNet(8).count_params()


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_predict_refuses_an_image_path_that_is_no_regular_file(kind, tmp_path, capsys):
    from keras_fastres.commands.predict import main
    path = tmp_path / "x.png"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path = "/dev/zero"
    assert main([str(tmp_path), str(path)]) == 2
    error = capsys.readouterr().err
    assert f"{path} is not a regular file (a FIFO or a device?)" in error
    assert error.count("\n") == 1


def test_a_comparison_whose_plot_cannot_be_written_still_prints_its_table(tmp_path, capsys):
    from test_compare import finished_run

    from keras_fastres.commands.train import main
    from keras_fastres.training.config import TrainConfig
    runs = [finished_run(tmp_path / f"run{seed}", "type1", seed, 0.1 + seed / 100, 1.0)
            for seed in (1, 2)]
    (tmp_path / "file").write_text("not a folder")
    assert main(TrainConfig(), ["--compare", *map(str, runs), "--output-dir",
                                str(tmp_path / "file" / "plots")]) == 1
    out, err = capsys.readouterr()
    assert "test error %" in out and "type1" in out and "Wrote" not in out
    assert err.startswith(f"error: Could not write {tmp_path / 'file' / 'plots'}")
    assert err.count("\n") == 1


def test_a_benchmark_report_that_cannot_be_written_names_its_file(tmp_path, capsys):
    from keras_fastres.commands.benchmark import main
    for index in range(4):
        (tmp_path / "images" / f"c{index % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (index, 0, 0)).save(tmp_path / "images" / f"c{index % 2}" /
                                                      f"{index}.png")
    assert main(["--loader", str(tmp_path / "images"), "--image-size", "8", "--rounds", "1",
                 "--workers", "1", "--json", "/dev/full"]) == 1
    out, err = capsys.readouterr()
    assert "loader images/s" in out  # the table came first
    assert err.startswith("warning: --loader is deprecated")  # 0.3's flag, still served
    assert err.endswith("error: Could not write /dev/full: No space left on device; the table "
                        "is above.\n")


def test_a_fine_tune_onto_other_class_names_says_so(tmp_path):
    from keras_fastres import FastResNet
    from keras_fastres.training.finetune import initialize_from

    FastResNet(8, num_classes=3, class_names=["cat", "dog", "eel"], input_shape=(8, 8, 3),
               normalization=None).save(tmp_path / "old.keras")
    new = FastResNet(8, num_classes=3, class_names=["cat", "cow", "elk"], input_shape=(8, 8, 3),
                     normalization=None)
    said = initialize_from(new, tmp_path / "old.keras")
    assert ("the classifier included although the class names differ (dog -> cow, eel -> elk)"
            in said) and "the input normalisation is the new training images'" in said
    same = FastResNet(8, num_classes=3, class_names=["cat", "dog", "eel"], input_shape=(8, 8, 3),
                      normalization=None)
    assert "differ" not in initialize_from(same, tmp_path / "old.keras")
    np.testing.assert_array_equal(same.get_layer("predictions").get_weights()[0],
                                  new.get_layer("predictions").get_weights()[0])
    assert json.loads(json.dumps(said))  # one plain line


def test_a_full_disk_names_the_file_or_folder_it_was_writing(tmp_path, monkeypatch):
    import csv

    from keras_fastres import callbacks
    from keras_fastres.serving import export
    from keras_fastres.training import backup

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(csv.DictWriter, "writerows", full)
    with pytest.raises(OSError, match=rf"Could not write {tmp_path / 'history.csv'}: No space "
                                      rf"left on device\. Make room"):
        callbacks._write_history(tmp_path / "history.csv", [])
    assert list(tmp_path.iterdir()) == []  # no half-written temporary left
    with pytest.raises(OSError, match=rf"Could not write the export into {tmp_path / 'onnx'}: "
                                      rf"No space left on device"):
        export.publish(tmp_path / "onnx", "auto", full)
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == []
    # The backup's room check keeps two sizes apart ("2 MB and 2 MB" said nothing).
    assert (backup._megabytes(2.4 * 2 ** 20), backup._megabytes(1.6 * 2 ** 20)) == (
        "2.40 MB", "1.60 MB")
    assert backup._megabytes(300 * 2 ** 20) == "300 MB"


def test_a_validation_fraction_a_test_folder_makes_moot_is_said(tmp_path):
    from keras_fastres.data import load_image_folder
    from keras_fastres.errors import FastResWarning
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / split / name / f"{i}.png")
    with pytest.warns(FastResWarning, match=r"validation_fraction 0.3 .* has a test/ folder, "
                                            r"which is the test split as it is"):
        loaded = load_image_folder(tmp_path, 8, validation_fraction=0.3)
    assert len(loaded.test.labels) == 4
