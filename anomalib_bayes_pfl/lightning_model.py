# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Bayes-PFL as an anomalib model.

One class, two modes:

* **training** (``prompt_weights=None``): a ONE_CLASS model for anomalib's Engine, fed by a datamodule whose train
  split holds anomalies with masks (:class:`anomalib_bayes_pfl.data.AuxiliaryTrain`). It trains the two stages of
  the paper and keeps the best checkpoint by held-out *source* validation;
* **zero-shot** (``prompt_weights=<file>``): a ZERO_SHOT model, like WinCLIP, that loads trained prompt weights
  and is tested on unseen categories with the stock ``MVTecAD``, ``Visa`` or ``Folder`` datamodules.

Example:
    >>> from anomalib.engine import Engine  # doctest: +SKIP
    >>> from anomalib_bayes_pfl import AuxiliaryTrain, BayesPFL  # doctest: +SKIP
    >>> datamodule = AuxiliaryTrain("datasets/visa", ["candle", "pcb1"], source_format="visa",
    ...                             target_root="datasets/MVTecAD", target_categories=["bottle"])  # doctest: +SKIP
    >>> Engine(max_epochs=30).train(BayesPFL(), datamodule=datamodule)  # doctest: +SKIP

Paper:
    Qu et al., "Bayesian Prompt Flow Learning for Zero-Shot Anomaly Detection", CVPR 2025.
    Reference code: https://github.com/xiaozhen228/Bayes-PFL (MIT).
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.callbacks.checkpoint import ModelCheckpoint
from anomalib.data import Batch
from anomalib.metrics import AUPR, AUPRO, AUROC, Evaluator, F1Max
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import ImageVisualizer
from lightning.pytorch.callbacks import Callback
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch.optim.lr_scheduler import LambdaLR
from torchvision.transforms.v2 import Compose, InterpolationMode, Normalize, Resize, Transform

from .backbone import vision_depth
from .checkpoints import head_state_dict, load_prompt_weights
from .data import category_from_path
from .loss import BayesPFLLoss
from .meta_guidance import MetaGuidance
from .resume import StepSeeding
from .synthesis import ObjectAttentionAnomalyGenerator, attention_foreground
from .torch_model import DEFAULT_CLASS_NAME, BayesPFLModel

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 518
"""Input side of the paper (37 x 37 patches of ViT-L/14)."""

SELECTION_METRIC = "val_selection"
"""Mean of held-out source image AP and pixel AP; the best checkpoint maximises it."""

STAGE_METRIC = "val_pixel_AUPR"
"""Stage 1 continues while this improves (the reference watches pixel AP)."""

PAIR_SEED = 0x5EED
"""Seeds the per-step choice of prompt pair, so every DDP rank and a resumed run choose the same pair."""


class BayesPFL(AnomalibModule):
    """Bayes-PFL: Bayesian prompt flow learning for zero-shot anomaly detection.

    Args:
        backbone (str): open_clip ViT name. Defaults to ``"ViT-L-14-336"``.
        pretrained (str | None): open_clip tag, local CLIP weights file (open_clip checkpoint or OpenAI ``.pt``),
            or ``None`` for random weights. Defaults to ``"openai"``.
        image_size (int): Input side; a multiple of the patch size. Defaults to ``518``.
        feature_layers (Sequence[int]): 1-indexed ViT blocks tapped for patch tokens. Defaults to ``(6, 12, 18, 24)``.
        activation (str): MLP activation of CLIP: ``"auto"`` (follows the weights), ``"gelu"`` (the reference's
            re-implementation; needed with the authors' released heads) or ``"quick_gelu"``. Defaults to ``"auto"``.
        num_prompts (int): Prompt pairs in the bank. Defaults to ``3``.
        context_length (int): Context vectors per prompt. Defaults to ``5``.
        state_length (int): State vectors per prompt. Defaults to ``5``.
        num_flows (int): Planar flows per distribution. Defaults to ``10``.
        num_samples (int): Prompt samples per image at evaluation. Defaults to ``10``.
        eval_seed (int): Seed of the evaluation samples (fixed per model). Defaults to ``0``.
        class_name (str | None): Class name for the prompts at test time; ``None`` reads the datamodule's
            category (and, in training, each image's category folder). Defaults to ``None``.
        gaussian_sigma (float): Anomaly-map smoothing in pixels. Defaults to ``8``.
        score_alpha (float): Weight of the image branch in the image score. Defaults to ``0.5``.
        top_k (int): Map pixels averaged into the image score. Defaults to ``2000``.
        prompt_weights (str | None): Trained prompt weights (a checkpoint of this model or a file written by
            ``anomalib-bayes-pfl convert``); switches the model to zero-shot mode. Defaults to ``None``.
        focal_gamma (float): Focal-loss exponent. Defaults to ``2``.
        kl_weight (float): Weight of each KL term. Defaults to ``0.01``.
        orthogonal_weight (float): Weight of the orthogonality loss. Defaults to ``1``.
        lr (float): Learning rate of encoders, RCA and mappings. Defaults to ``1e-4``.
        lr_prompt (float): Learning rate of the prompt bank. Defaults to ``1e-3``.
        lr_flow (float): Learning rate of the flow parameters. Defaults to ``1e-3``.
        lr_temperature (float): Learning rate of the two temperatures. Defaults to ``1e-2``.
        betas (tuple[float, float]): Adam betas. Defaults to ``(0.5, 0.999)``.
        warmup_ratio (float): Share of stage-1 steps spent warming up before the cosine decay. Defaults to ``0.1``.
        stage_patience (int): Validation epochs without improvement of the source pixel AP after which stage 1
            ends (the best stage-1 weights are restored) and stage 2 begins. Defaults to ``4``.
        stage1_max_epochs (int | None): Start stage 2 after this many epochs at the latest (``None``: only the
            patience rule; a value >= the trainer's ``max_epochs`` trains stage 1 only). Defaults to ``None``.
        synthetic_anomalies (bool): Object-attention anomaly generation: turn a share of the normal training
            images into anomalies with masks, on the object found by CLIP's class-token attention. Needed for
            normal-only data (e.g. MVTecAD's train split). Defaults to ``False``.
        synthesis_probability (float): Share of normal training images that get an anomaly. Defaults to ``0.5``.
        anomaly_source_path (str | None): Folder of texture images used besides Perlin noise and the image itself.
            Defaults to ``None``.
        attention_layer (int | None): 1-indexed block whose class-token attention finds the object; ``None``: the
            middle block (12 of 24 for ViT-L/14). Defaults to ``None``.
        meta_guidance (bool): Meta-guided prompt tuning: remove the components of the prompts' gradient that
            conflict with the fixed prompts "a photo of a flawless/damaged <class>." Defaults to ``False``.
        meta_strength (float): lambda, the share of the conflicting component removed. Defaults to ``1``.
        locality_window (int | None): Locality-aware attention: odd window side, in patches, that patch tokens
            attend to in ``locality_layers`` (class token stays global); ``None`` disables it. Defaults to ``None``.
        locality_layers (Sequence[int] | None): 1-indexed blocks with locality-aware attention; ``None``: the last
            block. Defaults to ``None``.
        pre_processor, post_processor, evaluator, visualizer: As in :class:`AnomalibModule`.
    """

    def __init__(
        self,
        backbone: str = "ViT-L-14-336",
        pretrained: str | None = "openai",
        image_size: int = DEFAULT_IMAGE_SIZE,
        feature_layers: Sequence[int] = (6, 12, 18, 24),
        activation: str = "auto",
        num_prompts: int = 3,
        context_length: int = 5,
        state_length: int = 5,
        num_flows: int = 10,
        num_samples: int = 10,
        eval_seed: int = 0,
        class_name: str | None = None,
        gaussian_sigma: float = 8.0,
        score_alpha: float = 0.5,
        top_k: int = 2000,
        prompt_weights: str | None = None,
        focal_gamma: float = 2.0,
        kl_weight: float = 0.01,
        orthogonal_weight: float = 1.0,
        lr: float = 1e-4,
        lr_prompt: float = 1e-3,
        lr_flow: float = 1e-3,
        lr_temperature: float = 1e-2,
        betas: tuple[float, float] = (0.5, 0.999),
        warmup_ratio: float = 0.1,
        stage_patience: int = 4,
        stage1_max_epochs: int | None = None,
        synthetic_anomalies: bool = False,
        synthesis_probability: float = 0.5,
        anomaly_source_path: str | None = None,
        attention_layer: int | None = None,
        meta_guidance: bool = False,
        meta_strength: float = 1.0,
        locality_window: int | None = None,
        locality_layers: Sequence[int] | None = None,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: ImageVisualizer | bool = True,
    ) -> None:
        self.zero_shot = prompt_weights is not None  # configure_evaluator reads it inside super().__init__()
        if pre_processor is True:
            pre_processor = self.configure_pre_processor((image_size, image_size))
        super().__init__(pre_processor, post_processor, evaluator, visualizer)
        _check_training_arguments(warmup_ratio, stage_patience, stage1_max_epochs)
        self.attention_layer = _attention_layer(attention_layer, backbone)
        self.synthesis = (
            ObjectAttentionAnomalyGenerator(synthesis_probability, anomaly_source_path=anomaly_source_path)
            if synthetic_anomalies
            else None
        )
        self.meta_guidance = MetaGuidance(meta_strength) if meta_guidance else None
        self.model = BayesPFLModel(
            backbone=backbone,
            pretrained=pretrained,
            image_size=image_size,
            feature_layers=tuple(feature_layers),
            activation=activation,
            num_prompts=num_prompts,
            context_length=context_length,
            state_length=state_length,
            num_flows=num_flows,
            num_samples=num_samples,
            eval_seed=eval_seed,
            class_name=DEFAULT_CLASS_NAME if class_name is None else class_name,
            gaussian_sigma=gaussian_sigma,
            score_alpha=score_alpha,
            top_k=top_k,
            locality_window=locality_window,
            locality_layers=locality_layers,
        )
        if prompt_weights is not None:
            load_prompt_weights(self.model, prompt_weights)
        self.loss = BayesPFLLoss(focal_gamma, kl_weight, orthogonal_weight)
        self.automatic_optimization = False  # two stages, two optimisers
        self.stage_tracker = StageTracker(stage_patience, stage1_max_epochs)

    # -- anomalib policy ----------------------------------------------------------------------------------------

    @property
    def learning_type(self) -> LearningType:
        """ZERO_SHOT with trained prompt weights (Engine.fit only validates), else ONE_CLASS (Engine.fit trains)."""
        return LearningType.ZERO_SHOT if self.zero_shot else LearningType.ONE_CLASS

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No overrides: epochs, devices and strategy stay the user's."""
        return {}

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Bicubic resize to the model's input size and CLIP's normalisation (exported with the model)."""
        image_size = image_size or (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
        transform = Compose(
            [
                Resize(image_size, interpolation=InterpolationMode.BICUBIC, antialias=True),
                Normalize(mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD),
            ],
        )
        return PreProcessor(transform=transform)

    def configure_post_processor(self) -> PostProcessor:
        """Anomalib's post-processor in both modes (the base class refuses one for zero-shot models)."""
        return PostProcessor()

    def configure_evaluator(self) -> Evaluator:
        """Image AUROC/F1-max and pixel AUROC/F1-max/AUPRO; in training, source-validation APs for selection."""
        test_metrics = [
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            F1Max(fields=["pred_score", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            F1Max(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        ]
        val_metrics = None
        if not self.zero_shot:
            val_metrics = [
                AUPR(fields=["pred_score", "gt_label"], prefix="val_image_"),
                AUPR(fields=["anomaly_map", "gt_mask"], prefix="val_pixel_", strict=False),
            ]
        return Evaluator(val_metrics=val_metrics, test_metrics=test_metrics)

    @classmethod
    def configure_visualizer(cls) -> ImageVisualizer:
        """Image, ground-truth mask, anomaly map and the map over the image, side by side."""
        return ImageVisualizer(fields=["image", "gt_mask", "anomaly_map"], overlay_fields=[("image", ["anomaly_map"])])

    def configure_callbacks(self) -> Sequence[Callback]:
        """In training, seed every step and keep the best checkpoint by source validation plus the last one.

        Step seeding (from the run's seed and the step) makes a resumed run draw what an uninterrupted one would.
        The checkpoint callback is added only when the trainer checkpoints at all (``enable_checkpointing=False``
        is honoured).
        """
        callbacks = list(super().configure_callbacks())
        if not self.zero_shot:
            callbacks.append(StepSeeding())
        checkpointing = self._trainer is not None and self.trainer.checkpoint_callback is not None
        if not self.zero_shot and checkpointing:
            callbacks.append(
                ModelCheckpoint(
                    dirpath=Path(self.trainer.default_root_dir) / "weights" / "lightning",
                    filename="model",
                    monitor=SELECTION_METRIC,
                    mode="max",
                    save_last=True,
                    auto_insert_metric_name=False,
                ),
            )
        return callbacks

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[dict[str, Any]]] | None:
        """Stage 1: the reference's Adam groups with warm-up + cosine; stage 2: Adam on the image branch."""
        if self.zero_shot:
            return None
        hparams = self.hparams
        stage1, stage2 = build_optimizers(
            self.model, hparams.lr, hparams.lr_prompt, hparams.lr_flow, hparams.lr_temperature, tuple(hparams.betas)
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = LambdaLR(stage1, warmup_cosine(total, hparams.warmup_ratio))
        return [stage1, stage2], [{"scheduler": schedule, "interval": "step"}]

    # -- steps ---------------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Write the test category into the prompts (zero-shot), unless a class name was given."""
        del stage
        if not self.zero_shot or self.hparams.class_name is not None or self._trainer is None:
            return
        category = getattr(self.trainer.datamodule, "category", None)
        if isinstance(category, str) and category.strip():
            self.model.set_class_name(category)

    def on_train_start(self) -> None:
        """Refuse normal-only training data unless anomalies are synthesised, and a missing texture folder."""
        if self.synthesis is not None:
            self.synthesis.check_sources()
        samples = getattr(getattr(self.trainer.datamodule, "train_data", None), "samples", None)
        normal_only = samples is not None and "label_index" in samples and not samples.label_index.any()
        if self.synthesis is None and normal_only:
            msg = (
                "The training split holds no anomalous images (e.g. MVTecAD's train split), so Bayes-PFL has "
                "nothing to learn from. Enable synthetic anomalies (BayesPFL(synthetic_anomalies=True), "
                "--model.synthetic_anomalies true) or train on labelled auxiliary data with AuxiliaryTrain."
            )
            raise ValueError(msg)

    def _class_names(self, batch: Batch) -> list[str] | None:
        """Per-image class names from the category folders (mixed-category data); ``None`` keeps the model's."""
        if self.hparams.class_name is not None or batch.image_path is None:
            return None
        return [category_from_path(path) or self.model.class_name for path in batch.image_path]

    def _pair_index(self) -> int:
        """The bank pair trained this step: random, but the same on every rank and after a resume."""
        generator = torch.Generator().manual_seed(PAIR_SEED + self.global_step)
        return int(torch.randint(self.model.prompt_bank.num_prompts, (1,), generator=generator))

    def training_step(self, batch: Batch, *args, **kwargs) -> torch.Tensor:
        """One optimisation step of the current stage (with synthetic anomalies and meta guidance when enabled)."""
        del args, kwargs
        stage = self.model.stage
        images, labels, masks = self._training_inputs(batch)
        class_names = self._class_names(batch)
        outputs = self.model(images, class_names)
        grid = self.model.backbone.grid_size
        terms = self.loss(outputs, labels, masks, self._pair_index(), stage, grid)
        optimizer = self.optimizers()[stage - 1]
        optimizer.zero_grad()
        guided = self.meta_guidance is not None and stage == 1
        if guided:
            parameters = self.model.prompt_parameters()
            names = class_names or [self.model.class_name] * len(images)
            meta = self.meta_guidance.meta_text(self.model.backbone, names)
            guide_loss = self.meta_guidance.loss(outputs["global_feature"], outputs["text_embeddings"], meta)
            guide = self.meta_guidance.guide_gradients(guide_loss, parameters)
        self.manual_backward(terms["loss"])
        if guided:
            average = functools.partial(self.trainer.strategy.reduce, reduce_op="mean")
            terms |= self.meta_guidance.project(parameters, guide, average) | {"meta_loss": guide_loss.detach()}
        optimizer.step()
        if stage == 1:
            self.lr_schedulers().step()
        self.log_dict({f"train_{name}": value.detach() for name, value in terms.items()}, sync_dist=True)
        self.log("train_stage", float(stage), sync_dist=True)
        return terms["loss"].detach()

    @torch.no_grad()
    def _training_inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Images, labels and masks to train on: the batch's, plus synthetic anomalies when enabled.

        Synthesis runs on the pre-processed batch (after every augmentation and the resize), so masks are made at
        the model's input resolution and need no re-alignment; untouched pixels keep their exact values.
        """
        if self.synthesis is None:
            return batch.image, batch.gt_label, batch.gt_mask
        images = batch.image
        chosen = self.synthesis.choose(batch.gt_label)  # the object attention is computed for these images only
        attention = self.model.backbone.class_attention(images[chosen], self.attention_layer)
        foreground = attention_foreground(attention, tuple(images.shape[-2:]))
        mean, std = _normalisation(self.pre_processor, images)
        synthetic, masks, labels = self.synthesis.add_anomalies(images * std + mean, foreground, chosen, batch.gt_label)
        images = torch.where(masks.bool().unsqueeze(1), (synthetic - mean) / std, images)
        if batch.gt_mask is not None:
            masks = torch.maximum(masks, (batch.gt_mask > 0.5).to(masks.dtype))
        return images, labels, masks

    def validation_step(self, batch: Batch, *args, **kwargs) -> Batch:
        """Score the batch with per-image class names where the data layout gives them.

        The evaluator and post-processor collect what they need from the returned batch.
        """
        del args, kwargs
        return batch.update(**self.model(batch.image, self._class_names(batch))._asdict())

    test_step = validation_step

    def on_validation_epoch_end(self) -> None:
        """Log the checkpoint-selection metric from the evaluator's source-validation APs."""
        if self.zero_shot or self.evaluator is None or self.trainer.sanity_checking:
            return
        values = [metric.compute() for metric in self.evaluator.val_metrics]
        if values:
            self.log(SELECTION_METRIC, torch.stack([v.float() for v in values]).mean(), sync_dist=True)

    def on_train_epoch_end(self) -> None:
        """Advance the two-stage schedule from this epoch's validation."""
        if self.model.stage != 1:
            return
        value = self.trainer.callback_metrics.get(STAGE_METRIC)
        decision = self.stage_tracker.update(self.current_epoch, None if value is None else float(value), self.model)
        if decision:
            logger.info(
                "Bayes-PFL: stage 1 ends after epoch %d; training the image branch (stage 2).", self.current_epoch
            )
            self.model.stage = 2

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the stage schedule's memory (best score, patience, best stage-1 weights) for resuming."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["bayes_pfl_stage_tracker"] = self.stage_tracker.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the stage schedule saved by :meth:`on_save_checkpoint`."""
        super().on_load_checkpoint(checkpoint)
        if "bayes_pfl_stage_tracker" in checkpoint:
            self.stage_tracker.load_state_dict(checkpoint["bayes_pfl_stage_tracker"])


def build_optimizers(
    model: BayesPFLModel,
    lr: float,
    lr_prompt: float,
    lr_flow: float,
    lr_temperature: float,
    betas: tuple[float, float],
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """The reference's two Adam optimisers: stage 1 over four learning-rate groups, stage 2 on the image branch."""
    groups = model.parameter_groups()
    stage1 = torch.optim.Adam(
        [
            {"params": groups["prompt"], "lr": lr_prompt},
            {"params": groups["temperature"], "lr": lr_temperature},
            {"params": groups["flow"], "lr": lr_flow},
            {"params": groups["other"], "lr": lr},
        ],
        betas=betas,
    )
    return stage1, torch.optim.Adam(groups["image_branch"], lr=lr, betas=betas)


def _check_training_arguments(warmup_ratio: float, stage_patience: int, stage1_max_epochs: int | None) -> None:
    """Reject schedule settings that cannot work, before CLIP is built."""
    if not 0.0 <= warmup_ratio < 1.0:
        msg = f"warmup_ratio={warmup_ratio} must lie in [0, 1)."
        raise ValueError(msg)
    if stage_patience < 1:
        msg = f"stage_patience={stage_patience} must be at least 1."
        raise ValueError(msg)
    if stage1_max_epochs is not None and stage1_max_epochs < 1:
        msg = f"stage1_max_epochs={stage1_max_epochs} must be >= 1 or None."
        raise ValueError(msg)


def _attention_layer(layer: int | None, backbone: str) -> int:
    """The block whose class-token attention finds the object: as given, or the middle one."""
    depth = vision_depth(backbone)
    chosen = max(depth // 2, 1) if layer is None else layer
    if not 1 <= chosen <= depth:
        msg = f"attention_layer={layer} must be a 1-indexed block within 1..{depth} of {backbone!r}."
        raise ValueError(msg)
    return chosen


def _normalisation(pre_processor: PreProcessor | None, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std ``(1, 3, 1, 1)`` of the pre-processor's ``Normalize`` (identity without one).

    Anomalies are blended in pixel space, so the normalised training batch is mapped back to ``[0, 1]`` first.
    """
    transforms: list[Transform] = []
    transform = getattr(pre_processor, "transform", None)
    if transform is not None:
        transforms = list(getattr(transform, "transforms", [transform]))
    normalize = next((t for t in transforms if isinstance(t, Normalize)), None)
    mean = normalize.mean if normalize is not None else [0.0] * 3
    std = normalize.std if normalize is not None else [1.0] * 3
    shape = (1, -1, 1, 1)
    return images.new_tensor(mean).view(shape), images.new_tensor(std).view(shape)


def warmup_cosine(total_steps: int, warmup_ratio: float) -> Any:  # noqa: ANN401 - a LambdaLR factor function
    """Linear warm-up over ``warmup_ratio`` of the steps, then cosine decay to 0 (the reference's schedule).

    Example:
        >>> factor = warmup_cosine(10, 0.1)
        >>> [round(factor(step), 3) for step in (0, 1, 5, 10)]
        [0.0, 1.0, 0.587, 0.0]
    """
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(warmup, 1)
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

    return factor


class StageTracker:
    """Decides when stage 1 ends: after ``patience`` epochs without a better source pixel AP, or at a cap.

    On the switch it restores the best stage-1 weights of the trainable head, as the reference does.
    """

    def __init__(self, patience: int, max_epochs: int | None) -> None:
        self.patience, self.max_epochs = patience, max_epochs
        self.best: float | None = None
        self.stale = 0
        self.best_head: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, value: float | None, model: BayesPFLModel) -> bool:
        """Record this epoch's metric; return True when stage 2 should start (weights already restored)."""
        if value is not None and (self.best is None or value > self.best):
            self.best, self.stale = value, 0
            self.best_head = copy.deepcopy(head_state_dict(model))
        elif value is not None:
            self.stale += 1
        reached_cap = self.max_epochs is not None and epoch + 1 >= self.max_epochs
        if self.stale >= self.patience or reached_cap:
            if self.best_head is not None:
                model.load_state_dict(self.best_head, strict=False)
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state for checkpoints."""
        return {"best": self.best, "stale": self.stale, "best_head": self.best_head}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.best, self.stale, self.best_head = state["best"], state["stale"], state["best_head"]
