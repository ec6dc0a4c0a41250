"""The benchmarks, each timing its cases interleaved in one process (median of rounds):
training steps of the variants (training.py), the exports serving (inference.py) and the
training input pipeline (pipeline.py), with their shared checks and tables (report.py).
The command line is fastres-benchmark (commands/benchmark.py)."""
