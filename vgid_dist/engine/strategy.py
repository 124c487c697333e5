"""The one object that talks to DeepSpeed: process group, engines, backward/step, collectives, consolidated
saves. Trainers, methods and the evaluator call this; nothing else in the package imports deepspeed.

Two engines per run: the student (ZeRO-3 with optimiser) and the frozen model (a second
``deepspeed.initialize`` with ZeRO-3 and no optimiser, loaded from the same folder; never a deepcopy, which
would copy empty partitioned parameters). Both are loaded under a live ``HfDeepSpeedConfig`` so parameters are
partitioned while they load instead of materialising a full copy per rank.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import ipaddress
import math
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vgid_dist.config import RunConfig, resolve_ds_config
from vgid_dist.engine.checkpoint import safe_load
from vgid_dist.errors import ConfigError
from vgid_dist.threads import size_torch_threads

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def ensure_launch_env() -> None:
    """Single-process runs (plain ``python launch/train.py``, ``vgid demo``) get rank/world/master defaults (the
    port is chosen when the store listens); under deepspeed, torchrun or Slurm+submitit these are already set."""
    # Ranks on one machine share its cores (and a Slurm task its allocation); more threads than cores makes
    # every op wait on the others.
    size_torch_threads()
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def loopback_store(timeout: datetime.timedelta):
    """The rendezvous store of a job whose master is this machine's loopback address, listening on that address
    alone (torch's own store listens on every interface). None when the master is elsewhere, or when torchrun's
    agent already holds the store."""
    host = os.environ["MASTER_ADDR"]
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" or not is_loopback(host):
        return None
    world = int(os.environ["WORLD_SIZE"])
    if int(os.environ["RANK"]) != 0:
        return dist.TCPStore(host, int(os.environ["MASTER_PORT"]), world, False, timeout)
    address = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(address[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address[4][0], int(os.environ.get("MASTER_PORT", 0))))  # port 0: a free one, no race
    sock.listen(128)
    os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
    # The store takes the listening socket over (detach: Python no longer closes it).
    return dist.TCPStore(host, int(os.environ["MASTER_PORT"]), world, True, timeout, master_listen_fd=sock.detach())


def resolve_attention(choice: str, on_gpu: bool) -> str:
    """``auto``: flash-attention-2 where it is installed and the model runs on CUDA, else SDPA; any other choice
    as given."""
    if choice != "auto":
        return choice
    if on_gpu:
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


class SingleProcessInference:
    """Evaluation in one process: the plain model on this machine's device, no process group and no DeepSpeed
    (importing it and starting a group take seconds before the first question). The members the evaluator uses
    of ``DeepSpeedStrategy``."""

    rank, world_size, is_main, zero_stage, synced_generation = 0, 1, True, 0, False

    def __init__(self, *, dtype: str, attention: str = "auto"):
        self.dtype = DTYPES[dtype]
        self.attention = attention
        self.on_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.on_gpu else torch.device("cpu")
        size_torch_threads()

    def attention_impl(self) -> str:
        return resolve_attention(self.attention, self.on_gpu)

    @staticmethod
    def gather_objects(obj: Any) -> list[Any]:
        return [obj]

    def close(self) -> None:
        pass


def inference_strategy(*, dtype: str, attention: str = "auto"):
    """``SingleProcessInference`` when this process is the whole job (no launcher, or a group of one); else the
    ranks' ZeRO-3 inference engine (``DeepSpeedStrategy.for_inference``)."""
    alone = int(os.environ.get("WORLD_SIZE", "1")) <= 1 and (not dist.is_initialized() or dist.get_world_size() == 1)
    if alone:
        return SingleProcessInference(dtype=dtype, attention=attention)
    _, world = DeepSpeedStrategy.init_process_group()
    return DeepSpeedStrategy.for_inference(dtype=dtype, attention=attention, zero_stage=3 if world > 1 else 0)


def lr_lambda(schedule: str, warmup: int, total: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def checkpoint_globals() -> list:
    """The classes DeepSpeed's own checkpoints hold besides tensors and plain data (ZeRO optimiser state): plain
    records, allowed to a ``weights_only`` load."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class SafeCheckpointLoads:
    """DeepSpeed's torch checkpoint engine, loading with ``weights_only=True`` (its own ``load`` unpickles
    anything: a file planted in a checkpoint folder would run code on resume). Everything else is the wrapped
    engine's."""

    def __init__(self, inner):
        from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

        if type(inner) is not TorchCheckpointEngine:
            raise ConfigError(f"ds_config: checkpoint engine {type(inner).__name__} is not supported (its loads "
                              "are not restricted to tensors and plain data); remove the 'checkpoint' section")
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def load(self, path: str, map_location=None):
        return safe_load(Path(path), map_location, checkpoint_globals())


def _adamw(groups: list[dict], **hyper) -> torch.optim.AdamW:
    """torch's fused AdamW (one kernel per parameter group, CPU or GPU), else its default implementation.

    ZeRO-3 hands the optimiser one flat fp32 partition per group; the default single-tensor step allocates
    two temporaries of that size for the denominator, and on a step where the vocabulary dominates that was the
    step's peak (``small-qwen-vocab`` on CPU: 4.28 GB resident during the optimiser step, 3.82 GB fused, the
    backward's level). The fused kernel computes the same update in place."""
    try:
        return torch.optim.AdamW(groups, fused=True, **hyper)
    except (RuntimeError, ValueError):  # a torch or device without the fused kernel
        return torch.optim.AdamW(groups, **hyper)


class DeepSpeedStrategy:
    """Process group + DeepSpeed configuration of one job. ``for_run`` for training, ``for_inference`` for
    evaluation-only jobs."""

    def __init__(self, ds_config: dict, *, dtype: str, attention: str = "auto", optim=None):
        # torch 2.x flags the collectives DeepSpeed calls as deprecated, once per call: noise, not news.
        warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+`? is deprecated", category=FutureWarning)
        self.ds_config = ds_config
        self.optim = optim
        self.attention = attention
        self.dtype = DTYPES[dtype]
        self.zero_stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
        from deepspeed.accelerator import get_accelerator

        self.on_gpu = get_accelerator().device_name() == "cuda"
        self.device = torch.device("cpu")
        if self.on_gpu:
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
        self._hf_ds_config = None
        if self.zero_stage == 3:
            from transformers.integrations import HfDeepSpeedConfig

            # Kept alive for the strategy's lifetime: while it exists, from_pretrained partitions at load.
            self._hf_ds_config = HfDeepSpeedConfig(self.ds_config)

    @staticmethod
    def init_process_group(dist_timeout_s: int = 1800) -> tuple[int, int]:
        """Join (or create, for a single process) the process group; returns (rank, world_size)."""
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        ensure_launch_env()
        if not dist.is_initialized():
            backend = "nccl" if get_accelerator().device_name() == "cuda" else "gloo"
            timeout = datetime.timedelta(seconds=dist_timeout_s)
            store = loopback_store(timeout)
            if store is not None:  # DeepSpeed then adopts the group
                dist.init_process_group(backend, store=store, rank=int(os.environ["RANK"]),
                                        world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout)
            deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
        return dist.get_rank(), dist.get_world_size()

    @classmethod
    def for_run(cls, cfg: RunConfig) -> DeepSpeedStrategy:
        _, world = cls.init_process_group(cfg.dist_timeout_s)
        return cls(resolve_ds_config(cfg, world), dtype=cfg.model.dtype, attention=cfg.model.attention,
                   optim=cfg.optim)

    @classmethod
    def for_inference(cls, *, dtype: str, attention: str = "auto", zero_stage: int = 3,
                      dist_timeout_s: int = 1800) -> DeepSpeedStrategy:
        _, world = cls.init_process_group(dist_timeout_s)
        ds = {"train_batch_size": world, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
              "bf16": {"enabled": dtype == "bfloat16"}, "fp16": {"enabled": dtype == "float16"},
              "zero_optimization": {"stage": zero_stage}, "steps_per_print": 10**9}
        return cls(ds, dtype=dtype, attention=attention)

    @property
    def rank(self) -> int:
        return dist.get_rank()

    @property
    def world_size(self) -> int:
        return dist.get_world_size()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def synced_generation(self) -> bool:
        """Under ZeRO-3 every rank must keep calling forward until all ranks finish generating."""
        return self.zero_stage == 3 and self.world_size > 1

    # -- engines --------------------------------------------------------------------------------------------------
    def attention_impl(self) -> str:
        return resolve_attention(self.attention, self.on_gpu)

    def build_student(self, model: torch.nn.Module, total_steps: int):
        import deepspeed

        o = self.optim
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("the student has no trainable parameters")
        ds = copy.deepcopy(self.ds_config)
        optimizer = None
        if "optimizer" not in ds:
            decay = [p for p in trainable if p.ndim >= 2]
            no_decay = [p for p in trainable if p.ndim < 2]
            optimizer = _adamw([{"params": decay, "weight_decay": o.weight_decay},
                                {"params": no_decay, "weight_decay": 0.0}], lr=o.lr, betas=o.betas, eps=o.eps)
        schedule = lr_lambda(o.schedule, o.warmup_steps, total_steps)
        # The engine steps the scheduler at optimiser steps only (gradient-accumulation boundaries).
        engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, model_parameters=None if optimizer is not None else trainable,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule), config=ds)
        engine.checkpoint_engine = SafeCheckpointLoads(engine.checkpoint_engine)
        return engine

    def build_frozen(self, model: torch.nn.Module):
        import deepspeed

        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        ds = copy.deepcopy(self.ds_config)
        ds.pop("optimizer", None)
        engine, *_ = deepspeed.initialize(model=model, config=ds)
        engine.eval()
        return engine

    # -- steps ----------------------------------------------------------------------------------------------------
    def backward(self, engine, loss: torch.Tensor) -> None:
        # Losses are normalised by global token counts (sum over all ranks and micro-batches). DeepSpeed
        # divides by the accumulation steps and averages gradients over ranks; scaling by both restores the
        # plain gradient of the globally normalised loss.
        engine.backward(loss * (self.world_size * engine.gradient_accumulation_steps()))

    def step(self, engine) -> None:
        engine.step()

    @staticmethod
    def micro_steps(engine) -> int:
        return int(engine.micro_steps)

    @staticmethod
    def discard_accumulated(engine, micro_steps: int) -> None:
        """Drop the gradients accumulated since ``micro_steps`` and rewind the accumulation counter: the
        optimiser step is skipped as if its micro-batches never ran (no update, no scheduler step)."""
        engine.optimizer.zero_grad(set_to_none=True)  # ZeRO-3 also restarts accumulation (micro_step_id = 0)
        engine.zero_grad()
        engine.micro_steps = micro_steps

    @staticmethod
    def grad_norm(engine) -> float | None:
        norm = engine.get_global_grad_norm()
        if norm is None:
            return None
        return float(norm.item() if torch.is_tensor(norm) else norm)

    @staticmethod
    def current_lr(engine) -> float:
        return float(engine.get_lr()[0])

    # -- collectives ------------------------------------------------------------------------------------------------
    def all_reduce_sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's object on rank 0 (None elsewhere)."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if it is True on any rank (one tiny all-reduce: a collective decision keeps ranks
        making the same calls)."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def save_engine_checkpoint(self, engine, folder: Path, tag: str, client_state: dict) -> None:
        """Engine, optimiser (ZeRO shards: every rank writes its own) and scheduler state."""
        engine.save_checkpoint(str(folder), tag=tag, client_state={**client_state, "world_size": self.world_size},
                               save_latest=False)

    def load_engine_checkpoint(self, engine, folder: Path, tag: str) -> dict:
        """Every file is read through ``SafeCheckpointLoads``: tensors and plain data only."""
        saved_world = self._saved_world_size(folder / tag)
        if saved_world is not None and saved_world != self.world_size:
            raise ConfigError(f"{folder / tag}: checkpoint written by {saved_world} ranks cannot resume on "
                             f"{self.world_size} (ZeRO shards are per rank); resume with {saved_world} ranks")
        _, state = engine.load_checkpoint(str(folder), tag=tag, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
        return state or {}

    @staticmethod
    def _saved_world_size(folder: Path) -> int | None:
        shards = list(folder.glob("*optim_states.pt"))
        return len(shards) or None

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    # -- parameters -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def gathered(self, params, modifier_rank: int | None = None):
        """Full parameters inside the block (ZeRO-3 gathers the shards; other stages: no-op)."""
        if self.zero_stage != 3:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params), modifier_rank=modifier_rank):
            yield

    def full_state_dict(self, engine) -> dict[str, torch.Tensor] | None:
        """Consolidated weights on rank 0 (None on other ranks). Every rank must call this."""
        if self.zero_stage == 3:
            state = engine._zero3_consolidated_16bit_state_dict()
            return state if self.is_main else None
        return engine.module.state_dict() if self.is_main else None

    def save_pretrained(self, engine, adapter, out_dir: str | Path) -> None:
        """The model as a Hugging Face folder with safetensors (+ tokenizer and image processor), written to a
        temporary folder and renamed when complete. Every rank must call this (ZeRO-3 gathers)."""
        from vgid_dist.models.export import save_hf_folder

        state = self.full_state_dict(engine)
        if self.is_main:
            save_hf_folder(engine.module, Path(out_dir), tokenizer=adapter.tokenizer,
                           image_processor=adapter.image_processor, state_dict=state)
        self.barrier()

    def save_lora(self, engine, adapter, model_dir: str | Path, adapter_dir: str | Path) -> None:
        """LoRA mode's exports: the adapter alone (``adapter_dir``, peft format) and the base model with the
        adapter merged in (``model_dir``, a plain Hugging Face folder). Merging needs the full base weights, so
        they are gathered first (ZeRO-3: every rank must call this)."""
        from vgid_dist.models.lora import save_lora_exports

        state = self.full_state_dict(engine)
        if self.is_main:
            save_lora_exports(engine.module, state, adapter, Path(model_dir), Path(adapter_dir))
        self.barrier()

    def close(self) -> None:
        """Forget the ZeRO-3 loading context, so later from_pretrained calls in this process load plainly."""
        if self._hf_ds_config is not None:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
            self._hf_ds_config = None
