"""Multi-process training on RecBole 1.2.1's own ``torch.distributed`` mechanism.

RecBole's mechanism (kept as it is): a config with ``local_rank`` joins a process group in ``Config._init_device``
(``tcp://<ip>:<port>``, global rank ``offset + local_rank`` of ``world_size``); ``single_spec`` is then False and
the trainer wraps the model in ``DistributedDataParallel``, arms DDP's gradient all-reduce before every batch
(``set_reduce_hook`` + ``sync_grad_loss``: every parameter of the model, so also GFlowGR's log Z / flow heads and
PPO's value head, which are attached to the model before the trainer is built); the loaders shard the data with
a ``DistributedSampler`` and divide ``train_batch_size`` / ``eval_batch_size`` by ``world_size`` (the global
batch stays the configured one); ranks other than 0 log errors only.

What this module adds, each in one place:

* :func:`launching` / :func:`launch`: ``run(..., --nproc=N)`` validates the keys, builds the caches once in the
  launching process (converted dataset, semantic IDs; the SFT checkpoint of a fine-tuning run is resolved before,
  by ``quick_start.run``), then starts N processes with ``torch.multiprocessing`` (spawn), each running the same
  ``run`` with its ``local_rank``; only global rank 0 writes the result row, the SFT cache and the export, and its
  row is returned. A :class:`GFlowGRError` in a process is raised again in the launcher (one-line CLI error).
* :func:`join_cpu_group`: RecBole hardcodes NCCL and ``cuda:<local_rank>``; without a usable GPU the group uses
  gloo on the CPU, and DDP gets no ``device_ids`` (CPU modules take none). GPUs keep RecBole's own set-up.
* :class:`DistributedMixin` (put in front of the trainer class of a multi-process run, :func:`trainer_class`):
  evaluation gathers the collected rows of every rank (:class:`GatheringCollector`), so full-ranking metrics are
  computed over all users exactly as one process would (RecBole averages per-rank metrics weighted by batch
  count and counts the sampler's padding twice); only global rank 0 writes checkpoints, and it reads the best one
  and broadcasts it for the test (no shared file system needed); every rank uses rank 0's checkpoint name; the
  trainer's own ``generator`` (GFlowGR's sampler, the baselines' rollouts) gets ``seed + rank``, the training
  sampler shuffles with ``seed`` (RecBole leaves it at 0); after every epoch the ranks' weights are checked to be
  the same (:func:`check_in_sync`).
* :func:`backward`: a ``backward`` inside a loss function (PPO/GRPO's extra optimiser steps) with DDP's
  all-reduce, re-armed for RecBole's own backward at the end of the batch.
"""
import os
import socket

import torch
import torch.distributed as dist
from recbole.evaluator import Collector
from torch.utils.data.distributed import DistributedSampler

from recbole_gflowgr.foundation.errors import ConfigError, GFlowGRError

CHILD_SETUP = []  # picklable callables run first in every started process (e.g. tests install stand-ins here)
ROW_KEYS = ("rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label")  # one row per evaluated sample


# ----- ranks -------------------------------------------------------------------------------------------------
def global_rank(config):
    return 0 if config["single_spec"] else config["offset"] + config["local_rank"]


def is_main(config):
    """Whether this process writes results, caches and exports (global rank 0, or a single process)."""
    return global_rank(config) == 0


def _gpu_list(config_dict):
    gpu = config_dict.get("gpu_id")
    return ",".join(map(str, gpu)) if isinstance(gpu, (tuple, list)) else str(gpu if gpu is not None else "")


def uses_gpu(config_dict):
    """RecBole's rule (``Config._init_device``): CUDA when ``gpu_id`` is not empty and torch sees a GPU."""
    return bool(_gpu_list(config_dict)) and torch.cuda.is_available()


# ----- validation and launch ---------------------------------------------------------------------------------
def check(config):
    """One-line :class:`ConfigError` naming the key for an impossible ``nproc`` / ``world_size`` / ``offset`` /
    ``ip`` / ``port``; returns the effective world size."""
    nproc, world, offset, port = config["nproc"], config["world_size"], config["offset"], config["port"]
    if not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"nproc={nproc!r} must be an integer >= 1 (processes started on this machine; 1 = no "
                          "multi-process training)")
    if not isinstance(world, int) or (world != -1 and world < 1):
        raise ConfigError(f"world_size={world!r} must be -1 (= nproc, one machine) or the total number of processes "
                          "over all machines")
    if not isinstance(offset, int) or offset < 0:
        raise ConfigError(f"offset={offset!r} must be an integer >= 0 (processes started on the machines before "
                          "this one)")
    world = nproc if world == -1 else world
    if offset + nproc > world:
        raise ConfigError(f"offset + nproc = {offset + nproc} exceeds world_size={world}: set world_size to the "
                          "total number of processes and offset to the processes on the machines before this one")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"port={port!r} must be a free TCP port (1-65535) on the machine of global rank 0")
    if not isinstance(config["ip"], str) or not config["ip"]:
        raise ConfigError(f"ip={config['ip']!r} must be the address of the machine of global rank 0 (e.g. 127.0.0.1)")
    if uses_gpu(config.final_config_dict):
        listed = len(_gpu_list(config.final_config_dict).split(","))
        usable = min(listed, torch.cuda.device_count())
        if nproc > usable:
            raise ConfigError(f"nproc={nproc} but only {usable} GPU(s) are usable (gpu_id='{config['gpu_id']}', torch "
                              f"sees {torch.cuda.device_count()}): lower --nproc or list more GPUs in --gpu_id")
    return world


def launching(config):
    """Whether ``run`` should start processes: ``nproc > 1`` or a ``world_size`` given, in a process that is not
    itself one of them. Validates the keys in every case."""
    check(config)
    return config["single_spec"] and (config["nproc"] > 1 or config["world_size"] > 0)


def _with(cmd_args, **values):
    """``cmd_args`` with ``--key=value`` for each of ``values`` (replacing any earlier value of that key)."""
    keys = tuple(f"--{k}=" for k in values)
    return [a for a in cmd_args if not a.startswith(keys)] + [f"--{k}={v}" for k, v in values.items()]


def launch(run, config, model, dataset, config_file_list, config_dict, cmd_args, saved, pretrained, prepare):
    """Start ``nproc`` processes running ``run`` with their ``local_rank``; returns global rank 0's row (None on
    a machine without global rank 0). ``prepare(config)`` first builds what every process would otherwise build
    concurrently (``quick_start.prepare_caches``)."""
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    world = check(config)
    prepare(config)
    extra = {"world_size": world}
    if pretrained:  # resolved (and trained if needed) here: the processes must not each train it
        extra["pretrained_checkpoint"] = pretrained
    args = (model, dataset, config_file_list, config_dict, _with(list(cmd_args), **extra), saved)
    queue = mp.get_context("spawn").SimpleQueue()
    context = mp.spawn(_child, args=(run, args, queue, list(CHILD_SETUP), config["nproc"]), nprocs=config["nproc"],
                       join=False)
    messages = []
    try:
        while not context.join(timeout=1):
            while not queue.empty():  # drained while waiting: a full pipe would block the writer
                messages.append(queue.get())
    except ProcessException:
        while not queue.empty():
            messages.append(queue.get())
        for kind, value in messages:
            if kind == "error":
                raise value from None
        raise
    while not queue.empty():
        messages.append(queue.get())
    return next((value for kind, value in messages if kind == "row"), None)


def _child(local_rank, run, args, queue, setup, nproc):
    for fn in setup:
        fn()
    if "OMP_NUM_THREADS" not in os.environ and not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))  # N processes share the cores
    model, dataset, config_file_list, config_dict, cmd_args, saved = args
    try:
        row = run(model, dataset, config_file_list, config_dict, _with(cmd_args, local_rank=local_rank), saved)
    except GFlowGRError as e:
        queue.put(("error", e))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if row is not None:
        queue.put(("row", row))


def free_port(ip="127.0.0.1"):
    """A TCP port that is free on ``ip`` now (for tests and single-machine launches)."""
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


# ----- process group on the CPU ------------------------------------------------------------------------------
def join_cpu_group(config, recbole_init_device):
    """``Config._init_device`` of a process of a multi-process run without a usable GPU: RecBole's single-process
    set-up (device ``cpu``), then the process group on gloo, then what RecBole's distributed branch sets."""
    d = config.final_config_dict
    local_rank = d.pop("local_rank")
    recbole_init_device()
    dist.init_process_group(backend="gloo", rank=d["offset"] + local_rank, world_size=d["world_size"],
                            init_method=f"tcp://{d['ip']}:{d['port']}")
    d.update(local_rank=local_rank, single_spec=False)
    if local_rank != 0:
        d.update(state="error", show_progress=False, verbose=False)
    import recbole.trainer.trainer as recbole_trainer

    recbole_trainer.DistributedDataParallel = _cpu_ddp


def _cpu_ddp(module, device_ids=None, **kwargs):
    """RecBole builds ``DistributedDataParallel(model, device_ids=[local_rank])``; a CPU module takes none."""
    return torch.nn.parallel.DistributedDataParallel(module, **kwargs)


# ----- training and evaluation -------------------------------------------------------------------------------
def backward(trainer, loss):
    """``loss.backward()``; in a multi-process run with DDP's gradient all-reduce over every parameter, then armed
    again for the next backward (RecBole arms it once per batch, before the loss function runs)."""
    if getattr(trainer, "distributed_model", None) is None:  # RecBole wraps the model in DDP only when distributed
        loss.backward()
        return
    (loss + trainer.sync_grad_loss()).backward()
    trainer.set_reduce_hook()


def interleave(parts, n):
    """The rows of ``DistributedSampler(shuffle=False)`` shards back in dataset order: rank r's i-th row is sample
    ``i * world_size + r``; rows from ``n`` on are the sampler's padding (repeats of the first samples)."""
    return torch.stack(parts, dim=1).flatten(0, 1)[:n]


def check_in_sync(model, epoch_idx):
    """Every rank must hold the same weights after an epoch (each applies the same all-reduced gradients): a
    checksum per parameter is compared over the ranks; a difference means a gradient was not all-reduced."""
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])  # (n_params,)
    ranks = [torch.zeros_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(ranks, sums)
    if not all(torch.allclose(r, ranks[0], rtol=1e-6, atol=1e-9) for r in ranks):
        raise RuntimeError(f"the {len(ranks)} processes hold different weights after epoch {epoch_idx}: a gradient was "
                           "not all-reduced (a backward outside RecBole's batch loop must use distributed.backward)")


class GatheringCollector(Collector):
    """RecBole's collector whose data struct holds every rank's rows (dataset order, padding dropped), so the
    evaluator computes the metrics of all users on every rank. ``sampler``: the evaluated loader's sampler."""

    sampler = None
    gathered = False

    def get_data_struct(self):
        struct = super().get_data_struct()
        local = {k: struct[k] for k in ROW_KEYS if k in struct}
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
        per_rank = getattr(self.sampler, "num_samples", None)
        self.gathered = per_rank is not None and all(p[k].shape[0] == per_rank for p in parts for k in p)
        if self.gathered:  # else (rows are not one per sample): RecBole's own weighted mean of the ranks' metrics
            for key in local:
                struct[key] = interleave([p[key] for p in parts], len(self.sampler.dataset))
        return struct


class DistributedMixin:
    """In front of the trainer class of one process of a multi-process run (see the module docstring)."""

    def __init__(self, config, model):
        super().__init__(config, model)
        name = [self.saved_model_file]
        dist.broadcast_object_list(name, src=0)  # the checkpoint that rank 0 writes
        self.saved_model_file = name[0]
        self.eval_collector = GatheringCollector(config)
        gen = getattr(self, "generator", None)
        if isinstance(gen, torch.Generator):  # rank 0 draws what a single process would
            gen.manual_seed(config["seed"] + global_rank(config))

    def _save_checkpoint(self, *args, **kwargs):
        if is_main(self.config):  # RecBole: local rank 0 of every machine; here global rank 0 only
            return super()._save_checkpoint(*args, **kwargs)

    def _rank0(self):
        """resume.py's writer of the last checkpoint: global rank 0 too."""
        return is_main(self.config)

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        sampler = getattr(train_data, "sampler", None)
        if isinstance(sampler, DistributedSampler):  # RecBole leaves its seed at 0: every seed would shuffle alike
            sampler.seed = self.config["seed"]
        losses = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        check_in_sync(self.model, epoch_idx)
        return losses

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data and load_best_model:
            self.load_best(model_file or self.saved_model_file)
        if eval_data:
            self.eval_collector.sampler = eval_data.sampler
        return super().evaluate(eval_data, load_best_model=False, model_file=model_file, show_progress=show_progress)

    def load_best(self, path):
        """Global rank 0 reads the checkpoint; the weights reach every other rank by broadcast."""
        from recbole_gflowgr.foundation.compat import trusted_torch_load

        other = [None]
        if is_main(self.config):
            checkpoint = trusted_torch_load(path, map_location=self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            other = [checkpoint.get("other_parameter")]
            self.logger.info(f"Loading model structure and parameters from {path} (broadcast to every rank)")
        for tensor in self.model.state_dict().values():
            dist.broadcast(tensor, src=0)
        dist.broadcast_object_list(other, src=0)
        self.model.load_other_parameter(other[0])

    def _map_reduce(self, result, num_sample):
        return result if self.eval_collector.gathered else super()._map_reduce(result, num_sample)


def trainer_class(cls, config):
    """``cls`` itself for a single process, else ``cls`` with :class:`DistributedMixin` in front."""
    from recbole_gflowgr.trainer.base import with_mixin

    return cls if config["single_spec"] else with_mixin(DistributedMixin, cls)
