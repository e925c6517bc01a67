"""[compute] resolved for this process: the torch device and dtype the models run with.

"auto" means cuda where torch sees a GPU in the process that decides (the driver): on a Ray cluster
whose driver has no GPU but whose workers do, say "cuda" explicitly.
"""

from __future__ import annotations

from jobs.config import ComputeConfig
from jobs.errors import FactoryError

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # config name -> torch dtype name
# bf16 is used only where it keeps vectors this close (cosine) to the fp32 ones.
MIN_BF16_COSINE = 0.999


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def device_name(compute: ComputeConfig, local: bool = True) -> str:
    """"cpu" or "cuda" for compute.device. `local`: the models run in this process, so "cuda"
    without a GPU here is a mistake (one sentence); otherwise (Ray workers elsewhere) it is trusted."""
    if compute.device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if compute.device == "cuda" and local and not cuda_available():
        raise FactoryError("compute.device is 'cuda' but torch sees no GPU in this process; set compute.device "
                           "to 'cpu' or 'auto' (FACTORY__COMPUTE__DEVICE).")
    return compute.device


def uses_gpu(compute: ComputeConfig) -> bool:
    """Whether Ray should give training workers and inference actors a GPU each."""
    return device_name(compute, local=False) == "cuda"


def check_bf16_cosine(min_cosine: float, what: str) -> None:
    """Refuse bf16 inference (one sentence) if it moved vectors below MIN_BF16_COSINE of fp32."""
    if min_cosine < MIN_BF16_COSINE:
        raise FactoryError(f"compute.inference_dtype = 'bf16' moves {what} to cosine {min_cosine:.5f} of fp32, "
                           f"below the {MIN_BF16_COSINE} allowed; set compute.inference_dtype = 'fp32'.")
