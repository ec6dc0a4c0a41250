"""Files that appear only when complete: the hidden sibling, and what a killed writer leaves."""

import os
import subprocess
import sys

from keras_fastres.utils.files import remove_leftovers, temporary_sibling


def test_the_temporary_is_a_hidden_sibling_named_after_its_writer(tmp_path):
    target = tmp_path / "export" / "1"
    sibling = temporary_sibling(target)
    assert sibling.parent == target.parent
    assert sibling.name == f".1.incomplete-{os.getpid()}"
    assert temporary_sibling(tmp_path / "metrics.json").name.startswith(".metrics.json.")


def test_leftovers_of_dead_writers_go_and_live_writers_stay(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    dead_dir = tmp_path / f".1.incomplete-{dead}"
    (dead_dir / "variables").mkdir(parents=True)
    dead_file = tmp_path / f".metrics.json.incomplete-{dead}"
    dead_file.write_text("{")
    live = temporary_sibling(tmp_path / "2")
    live.mkdir()
    odd = tmp_path / ".notes.incomplete-someone"  # not a process id: not ours to remove
    odd.write_text("")
    kept = tmp_path / "1"
    kept.mkdir()
    remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, odd.name, "1"])
    remove_leftovers(tmp_path / "missing")  # no folder: nothing to do
