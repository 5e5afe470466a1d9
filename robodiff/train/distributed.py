"""Process-group setup for DDP under torchrun, and the single-process fallback.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT for every worker; when
they are absent we are one process and no process group is created, so the same trainer code runs
unchanged on a laptop and on many GPUs.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from robodiff.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """`auto` takes this rank's GPU when CUDA is present, else the CPU."""
    if requested not in ("auto", "cpu", "cuda") and not requested.startswith("cuda:"):
        raise ConfigError(f"device '{requested}' is not one of auto, cpu, cuda, cuda:N")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but torch sees no CUDA device (use device=cpu or auto)")
        if requested == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(requested)


def init(requested_device: str) -> DistInfo:
    """Join the torchrun process group (gloo on CPU, nccl on GPU) or stay single-process."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return DistInfo(device=pick_device(requested_device, local_rank))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "rank": rank, "world_size": world}
        if device.type == "cuda":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    """Rank 0's value on every rank (e.g. the run dir name chosen from a timestamp)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(info: DistInfo, value: float) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def parameter_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes, in name order: equal digests mean identical weights."""
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def gather_digests(info: DistInfo, digest: str) -> list[str]:
    if not info.enabled:
        return [digest]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, digest)
    return [str(d) for d in out]


def any_rank(info: DistInfo, flag: bool) -> bool:
    """True on every rank when `flag` is true on any (a collective: all ranks call it together)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_min(info: DistInfo, value: float) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return float(t.item())
