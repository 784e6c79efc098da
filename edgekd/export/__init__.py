"""Exporters: ONNX with the input contract in its metadata and a parity check vs PyTorch."""
