"""Latency on the workstation: deploy/'s harness on ONNX models and a PyTorch-eager baseline
for checkpoints (`edgekd bench`), and the teacher-vs-student comparison (`--compare`)."""
