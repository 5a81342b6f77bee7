"""The training loop: phases, optimiser, mixed precision, validation, checkpoints, resume.

One :class:`Trainer` runs every phase of ``cfg.train.phases`` (HoVer-Net: decoders
first with the encoder frozen, then everything) for either architecture. Each
epoch ends with validation and an atomic ``last.pt``; a killed run therefore
loses at most the epoch in progress, and ``resume`` continues bit-for-bit
(on the same machine) because all randomness of an epoch is reseeded from
``(seed, epoch)``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from hovercrypt.config import Config, ConfigError, TrainConfig
from hovercrypt.errors import InputError
from hovercrypt.models.checkpoint import load_init_weights
from hovercrypt.models.registry import get_family
from hovercrypt.train import state as st
from hovercrypt.train.amp import Precision, resolve_amp
from hovercrypt.train.distributed import DistInfo, barrier
from hovercrypt.train.logs import TrainLogger
from hovercrypt.train.optim import make_optimizer
from hovercrypt.train.validate import validate

LAST, BEST = "last.pt", "best.pt"


def patch_files(data_dir: str | Path, split: str, required: bool = True) -> list[Path]:
    """Sorted ``.npy`` patches of ``<data_dir>/<split>`` (sorted: the order must not depend on the disk)."""
    folder = Path(data_dir) / split
    files = sorted(folder.glob("*.npy")) if folder.is_dir() else []
    if required and not files:
        raise InputError(
            f"{folder}: no .npy patches found; run extract_patches.py first or pass --data_dir=<patch folder>"
        )
    return files


def resolve_resume(path: str | Path) -> Path:
    """``--resume`` takes a checkpoint file or a log folder (then its ``last.pt``)."""
    p = Path(path)
    if p.is_dir():
        p = p / LAST
    if not p.is_file():
        raise InputError(f"{path}: no checkpoint to resume from ({p} does not exist)")
    return p


class Trainer:
    """Trains ``cfg`` into ``log_dir``; ``resume_state`` is a loaded checkpoint dict to continue from."""

    def __init__(
        self,
        cfg: Config,
        log_dir: str | Path,
        info: DistInfo | None = None,
        resume_state: dict[str, Any] | None = None,
        progress: bool = True,
    ) -> None:
        from hovercrypt.models import build_model

        self.cfg = cfg
        self.log_dir = Path(log_dir)
        self.info = info or DistInfo(torch.device("cpu"))
        self.device = self.info.device
        self.progress = progress and self.info.is_main
        self.arch = cfg.model.arch
        self.family = get_family(self.arch, "model.arch")
        self.precision = Precision(self.device, resolve_amp(cfg.train.amp, self.device))
        self.best_key = cfg.train.best_metric
        if self.best_key == TrainConfig.best_metric:  # the default names HoVer-Net's NP Dice
            self.best_key = self.family.valid_metric
        known = {"train/loss", "valid/loss", self.family.valid_metric, "valid/pq", "valid/aji"}
        known |= {"valid/img_obj_f1", "valid/img_obj_dice", "valid/img_pq", "valid/img_score"}
        if self.best_key not in known and not (
            self.best_key.startswith(("train/", "valid/")) and self.best_key.endswith("_loss")
        ):
            raise ConfigError(
                f"train.best_metric={self.best_key!r} is not logged for {self.arch}; use one of "
                f"{sorted(known)} or a loss term like 'valid/np_ce_loss'"
            )
        self.slots = st.schedule(cfg)
        self.start_epoch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.best: float | None = None

        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        st.seed_everything(st.init_seed(cfg.train.seed))  # weight init depends on the seed only
        # on resume (or init_from) the weights come from a checkpoint: the encoder's pretrained
        # file is neither required nor read, it would be overwritten at once
        weights_from_checkpoint = resume_state is not None or bool(cfg.train.init_from)
        model_cfg = dataclasses.replace(cfg.model, pretrained=None) if weights_from_checkpoint else cfg.model
        self.model = build_model(model_cfg).to(self.device)
        if cfg.train.init_from and not resume_state:
            load_init_weights(self.model, cfg.train.init_from, cfg.model)
        #: the encoder starts from trained weights (ImageNet file or a finished checkpoint), so it
        #: may be frozen in phase 1 and keeps its BatchNorm statistics (train.freeze_encoder_bn)
        self.encoder_trained = bool(cfg.model.pretrained or cfg.train.init_from)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_files = patch_files(cfg.data.patch_dir, "train")
        self.valid_files = patch_files(cfg.data.patch_dir, "valid", required=False)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.phase: int | None = None
        self.net: torch.nn.Module = self.model  # the DDP wrapper when distributed
        self._resume_opt: dict[str, Any] | None = None
        if resume_state is not None:
            self._load_state(resume_state)

    # ----------------------------------------------------------------- state
    def _load_state(self, ck: dict[str, Any]) -> None:
        self.model.load_state_dict(ck["model"])
        self.start_epoch = int(ck["epoch"])
        self.global_step = int(ck.get("global_step", 0))
        self.history = [dict(r) for r in ck.get("history", [])][: self.start_epoch]
        self.best = ck.get("best")
        if "rng" in ck:
            st.set_rng_state(ck["rng"])
        if self.start_epoch < len(self.slots) and self.slots[self.start_epoch].phase == ck.get("phase"):
            self._resume_opt = ck  # same phase continues: restore optimiser / scheduler / scaler

    def _state(self, epoch_done: int) -> dict[str, Any]:
        return {  # the model weights are added by save_checkpoint
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.precision.scaler.state_dict(),
            "phase": self.phase,
            "epoch": epoch_done,
            "global_step": self.global_step,
            "history": self.history,
            "best": self.best,
            "best_metric": self.best_key,
            "rng": st.rng_state(),
        }

    def _save(self, name: str, epoch_done: int) -> None:
        from hovercrypt.models.checkpoint import save_checkpoint

        save_checkpoint(self.log_dir / name, self.model, self.cfg, **self._state(epoch_done))

    # ----------------------------------------------------------------- phases
    def enter_phase(self, p: int, batches_per_epoch: int = 1) -> None:
        """Freeze/unfreeze the encoder and start this phase's optimiser and learning-rate schedule."""
        phase = self.cfg.train.phases[p]
        encoder = getattr(self.model, "encoder", None)
        self.model.requires_grad_(True)
        if phase.freeze_encoder:
            if encoder is None:
                self._notice(f"phase {phase.name!r}: model has no .encoder to freeze; training all layers")
            elif not self.encoder_trained:
                # freezing random weights would only waste the phase: the decoders would learn on noise
                self._notice(
                    f"phase {phase.name!r}: the encoder has random weights (no --pretrained); "
                    "training all layers"
                )
            else:
                encoder.requires_grad_(False)
        params = [q for q in self.model.parameters() if q.requires_grad]
        n_epochs = sum(1 for s in self.slots if s.phase == p)
        opt_steps = n_epochs * max(1, -(-batches_per_epoch // phase.accum_steps))
        self.optimizer, self.scheduler = make_optimizer(phase, params, opt_steps)
        self.optimizer.zero_grad(set_to_none=True)
        if self._resume_opt is not None:
            self.optimizer.load_state_dict(self._resume_opt["optimizer"])
            self.scheduler.load_state_dict(self._resume_opt["scheduler"])
            if self._resume_opt.get("scaler"):
                self.precision.scaler.load_state_dict(self._resume_opt["scaler"])
            self._resume_opt = None
        self.net = self.model
        if self.info.distributed:  # re-wrapped per phase: DDP fixes its gradient buckets at construction
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.phase = p

    def train_mode(self) -> None:
        """Train mode, except that a pretrained encoder keeps its BatchNorm statistics.

        A frozen encoder runs in eval mode. With ``train.freeze_encoder_bn`` a pretrained
        encoder's BatchNorm layers stay in eval mode also while the encoder trains (their
        affine parameters still learn): running statistics re-estimated from batches of 4
        crops are far noisier than the ImageNet ones.
        """
        self.model.train()
        encoder = getattr(self.model, "encoder", None)
        if encoder is None:
            return
        if not any(q.requires_grad for q in encoder.parameters()):
            encoder.eval()
        elif self.cfg.train.freeze_encoder_bn and self.encoder_trained:
            for m in encoder.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    # ----------------------------------------------------------------- data
    def _datasets(self):
        from hovercrypt.data.dataset import PatchDataset

        kw = {"targets": self.arch, "seed": self.cfg.train.seed}  # the family's own targets
        root = Path(self.cfg.data.patch_dir)
        if self.cfg.data.sampling == "crops":
            from hovercrypt.data.crops import CropDataset

            train = CropDataset(root / "images" / "train", self.cfg, train=True, **kw)
        else:
            train = PatchDataset.from_dir(root / "train", self.cfg, train=True, **kw)
        valid = None
        has_valid = self.valid_files or (root / "valid" / "manifest.csv").is_file()
        if has_valid and self.cfg.train.valid_patches:
            valid = PatchDataset.from_dir(root / "valid", self.cfg, train=False, **kw)
        return train, valid

    def _loader(self, ds, batch_size: int, epoch: int, shuffle: bool) -> DataLoader:
        seed = st.epoch_seed(self.cfg.train.seed, epoch)
        gen = torch.Generator().manual_seed(seed)
        sampler = None
        if self.info.distributed and shuffle:
            sampler = DistributedSampler(ds, self.info.world_size, self.info.rank, shuffle=True, seed=seed)
        workers = self.cfg.train.num_workers
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            generator=gen,
            num_workers=workers,
            worker_init_fn=st.seed_worker if workers else None,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
        )

    # ----------------------------------------------------------------- loop
    def _loss(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]):
        loss, parts = self.family.compute_loss(out, batch, self.cfg.train.loss)
        return loss, {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in parts.items()}

    def train_step(
        self, batch: dict[str, torch.Tensor], where: str = "", step: bool = True
    ) -> tuple[float, dict, int]:
        """Forward + backward on ``batch``, and an optimiser step when ``step``: (loss, parts, batch size)."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        image = batch["image"]
        if self.cfg.train.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with self.precision.autocast():
            out = self.net(image)
        out = {k: v.float() for k, v in out.items()}
        loss, parts = self._loss(out, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"training loss is {value} ({where or f'step {self.global_step + 1}'}): "
                "lower the learning rate or set train.amp='none'"
            )
        phase = self.cfg.train.phases[self.phase] if self.phase is not None else None
        accum = phase.accum_steps if phase is not None else 1
        self.precision.backward_step(loss, self.optimizer, accum=accum, step=step)
        if step and self.scheduler is not None and getattr(self.scheduler, "per_step", False):
            self.scheduler.step()
        self.global_step += 1
        return value, parts, image.shape[0]

    def _train_epoch(self, loader: DataLoader, slot: st.EpochSlot, logger: TrainLogger) -> dict[str, float]:
        from tqdm import tqdm

        self.train_mode()
        max_steps = self.cfg.train.max_steps_per_epoch
        n_steps = min(len(loader), max_steps) if max_steps else len(loader)
        sums: dict[str, float] = {}
        n_seen = 0
        t0 = time.perf_counter()
        bar = tqdm(total=n_steps, desc=f"epoch {slot.epoch + 1}", leave=False, disable=not self.progress)
        accum = self.cfg.train.phases[slot.phase].accum_steps
        for step, batch in enumerate(loader):
            if step >= n_steps:
                break
            do_step = (step + 1) % accum == 0 or step + 1 == n_steps  # the epoch's last batch always steps
            value, parts, n = self.train_step(
                batch, where=f"epoch {slot.epoch + 1}, step {step + 1}", step=do_step
            )
            n_seen += n
            sums["loss"] = sums.get("loss", 0.0) + value * n
            for k, v in parts.items():
                sums[f"{k}_loss"] = sums.get(f"{k}_loss", 0.0) + float(v) * n
            logger.step(self.global_step, {"step/train_loss": value})
            bar.set_postfix(loss=f"{value:.4f}")
            bar.update(1)
        bar.close()
        if self.info.distributed:
            keys = list(sums)  # same insertion order on every rank
            t = torch.tensor([sums[k] for k in keys] + [n_seen], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(t)
            sums, n_seen = dict(zip(keys, t[:-1].tolist())), int(t[-1])
        metrics: dict[str, float] = {f"train/{k}": v / max(n_seen, 1) for k, v in sums.items()}
        metrics["sec_per_step"] = round((time.perf_counter() - t0) / max(n_steps, 1), 4)
        return metrics

    def _batches_per_epoch(self, ds, batch_size: int) -> int:
        n = -(-len(ds) // (batch_size * self.info.world_size))
        cap = self.cfg.train.max_steps_per_epoch
        return min(n, cap) if cap else n

    def _image_validation_due(self, slot: st.EpochSlot) -> bool:
        return (slot.epoch + 1) % self.cfg.train.valid_every == 0 or slot.epoch + 1 == len(self.slots)

    def _is_better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.cfg.train.best_mode == "max" else value < self.best

    def fit(self) -> list[dict[str, Any]]:
        """Run the remaining epochs; returns the per-epoch metric history."""
        from tqdm import tqdm

        cfg = self.cfg
        train_ds, valid_ds = self._datasets()
        valid_images = None
        if cfg.train.valid_images and self.info.is_main:
            from hovercrypt.train.validate_images import load_valid_images

            valid_images = load_valid_images(Path(cfg.data.patch_dir) / "images" / "valid")
        if self.info.is_main and valid_ds is None and cfg.train.valid_patches:
            self._notice(f"{Path(cfg.data.patch_dir) / 'valid'}: no validation patches, skipping validation")
        logger = TrainLogger(self.log_dir, enabled=self.info.is_main, purge_step=self.global_step or None)
        if self.info.is_main:
            cfg.save_json(self.log_dir / "config.json")
        want_inst = cfg.train.valid_instance_metrics and self._instance_metrics_available()
        if self.start_epoch >= len(self.slots):
            self._notice(f"all {len(self.slots)} epochs are done already; pass --epochs to train longer")
        ep_bar = tqdm(
            total=len(self.slots), initial=self.start_epoch, desc="epochs", disable=not self.progress
        )
        try:
            for slot in self.slots[self.start_epoch:]:
                phase = cfg.train.phases[slot.phase]
                if slot.phase != self.phase:
                    self.enter_phase(slot.phase, self._batches_per_epoch(train_ds, phase.batch_size))
                st.seed_everything(st.epoch_seed(cfg.train.seed, slot.epoch))
                if hasattr(train_ds, "set_epoch"):
                    train_ds.set_epoch(slot.epoch)
                t0 = time.perf_counter()
                loader = self._loader(train_ds, phase.batch_size, slot.epoch, shuffle=True)
                if isinstance(loader.sampler, DistributedSampler):
                    loader.sampler.set_epoch(slot.epoch)
                row: dict[str, Any] = {
                    "epoch": slot.epoch + 1,
                    "phase": slot.phase + 1,
                    "phase_name": phase.name,
                    "lr": self.optimizer.param_groups[0]["lr"],
                }
                row.update(self._train_epoch(loader, slot, logger))
                if not getattr(self.scheduler, "per_step", False):
                    self.scheduler.step()
                if valid_ds is not None and self.info.is_main:
                    vloader = self._loader(valid_ds, phase.batch_size, slot.epoch, shuffle=False)
                    row.update(
                        validate(
                            self.model, vloader, self._loss, cfg, self.device, self.precision.autocast,
                            channels_last=cfg.train.channels_last, instance_metrics=want_inst,
                            max_steps=cfg.train.max_steps_per_epoch, progress=self.progress,
                        )
                    )
                if valid_images is not None and self.info.is_main and self._image_validation_due(slot):
                    from hovercrypt.train.validate_images import validate_images

                    row.update(validate_images(self.model, valid_images, cfg, self.device, self.progress))
                row["seconds"] = round(time.perf_counter() - t0, 3)
                self._end_epoch(slot, row, logger)
                ep_bar.update(1)
                ep_bar.set_postfix({k: f"{row[k]:.4f}" for k in ("train/loss", self.best_key) if k in row})
        finally:
            ep_bar.close()
            if self.info.is_main:
                logger.finish(self.history)
        return self.history

    def _end_epoch(self, slot: st.EpochSlot, row: dict[str, Any], logger: TrainLogger) -> None:
        self.history.append(row)
        if self.info.is_main:
            improved = False
            if self.best_key in row:
                improved = self._is_better(float(row[self.best_key]))
                if improved:
                    self.best = float(row[self.best_key])
            elif self.best_key.startswith("valid/img_") and self.cfg.train.valid_images:
                pass  # image validation runs every train.valid_every epochs only
            elif any(k.startswith("valid/") for k in row):
                keys = sorted(k for k in row if "/" in k)
                self._save(LAST, slot.epoch + 1)  # keep the epoch before stopping
                raise ConfigError(f"train.best_metric={self.best_key!r} is not logged; logged: {keys}")
            row["best"] = int(improved)
            # metrics first, checkpoint last: a crash in between re-runs the epoch and the CSV
            # is rewritten from the checkpoint's history on resume
            logger.epoch(self.global_step, row, self.history)
            self._save(LAST, slot.epoch + 1)
            if improved:
                self._save(BEST, slot.epoch + 1)
        barrier(self.info)

    def _instance_metrics_available(self) -> bool:
        try:
            import hovercrypt.metrics  # noqa: F401
            import hovercrypt.postproc  # noqa: F401
        except ModuleNotFoundError as e:
            self._notice(f"PQ/AJI validation skipped: {e.name} is not available")
            return False
        return True

    def _notice(self, msg: str) -> None:
        if self.info.is_main:
            from tqdm import tqdm

            tqdm.write(msg)
