"""The command lines, and the only modules that parse arguments. They import the library; the
library never imports them.

    fastres-train       train.command (the recipes: train.main with their TrainConfig)
    fastres-export      export.main
    fastres-predict     predict.main
    fastres-benchmark   benchmark.main

Each also runs as `python -m keras_fastres.commands.<name>`.
"""
