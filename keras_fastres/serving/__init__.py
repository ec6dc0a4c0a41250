"""Serving a trained FastResNet: exports for TF Serving and ONNX runtimes (export.py), with
BatchNorm folded into the convolutions (folding.py), and classifying image files with an export
(predict.py)."""
