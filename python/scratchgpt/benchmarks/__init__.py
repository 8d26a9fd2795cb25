"""Benchmarks behind `scratchgpt bench`: the kernel table (kernels.py), the GPU and CPU
harnesses (gpu.py, cpu.py), the plain PyTorch GPT they compare against (torch_gpt.py) and the
tables and figure (report.py)."""
