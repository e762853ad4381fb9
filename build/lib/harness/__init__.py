"""astra-bench: network-emulation benchmarking harness for communication-efficient multi-device Transformer inference."""

__version__ = "0.1.0"
