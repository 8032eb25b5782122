"""MLLM-MSR reference implementation: library behind the notebooks."""
