"""Test-session setup: Triton kernels run in the interpreter when there is no GPU.

The variable must be in the environment before any ``@triton.jit`` function is defined, i.e. before
``vlmfix.kernels.triton_attention`` is imported, so it is set here, at collection time.
"""

import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
