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
    >>> datamodule = AuxiliaryTrain("datasets/visa", ["candle"], source_format="visa")  # doctest: +SKIP
    >>> Engine(max_epochs=30).train(BayesPFL(), datamodule=datamodule)  # doctest: +SKIP

Paper:
    Qu et al., "Bayesian Prompt Flow Learning for Zero-Shot Anomaly Detection", CVPR 2025.
    Reference code: https://github.com/xiaozhen228/Bayes-PFL (MIT).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch, InferenceBatch
from anomalib.metrics import AUPR, AUPRO, AUROC, Evaluator, F1Max
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import ImageVisualizer
from lightning.pytorch.callbacks import Callback
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch.optim.lr_scheduler import LambdaLR
from torchvision.transforms.v2 import Compose, InterpolationMode, Normalize, Resize

from . import defaults, finite, training
from .checkpointing import BestAndLastCheckpoint, drop_frozen_clip, restore_frozen_clip
from .checkpoints import check_prompt_weights_settings, load_prompt_weights
from .data.auxiliary import AuxiliaryTrain, category_from_path
from .export import ONNX_OPSET, ExportablePreProcessor
from .few_shot import check_few_shot_arguments, read_references, reference_paths, train_reference_paths
from .loss import BayesPFLLoss
from .meta_guidance import MetaGuidance
from .reporting import CategoryImageVisualizer, CategoryMetrics, PredictionTable
from .resume import run_seed, seed_global_generator, seeded
from .safe_loading import check_checkpoint_file, guard_checkpoint_loading, validate_stage_switch_state
from .synthesis import ObjectAttentionAnomalyGenerator, attention_block
from .thresholds import BayesPFLPostProcessor, SkipValidationWithoutData
from .torch_model import BayesPFLModel
from .uncertainty import UncertainInferenceBatch, forward_with_uncertainty
from .validation import (
    ValidationSplitCheck,
    holds_normal_images_only,
    selection_value,
    with_synthetic_anomalies,
)

logger = logging.getLogger(__name__)

SELECTION_METRIC = "val_selection"
"""Mean of held-out source image AP and pixel AP; the best checkpoint maximises it."""

STAGE_METRIC = "val_pixel_AUPR"
"""Stage 1 continues while this improves (the reference watches pixel AP)."""

STOP_METRIC = "val_image_AUPR"
"""Stage 2 continues while this improves (the reference watches image AP)."""

MODEL_ARGUMENTS = tuple(inspect.signature(BayesPFLModel).parameters)
"""Constructor arguments of the torch model: each is forwarded by name from the hyper-parameters."""

STAGE_SWITCH_KEY = "bayes_pfl_stage_tracker"
"""Checkpoint entry of the stage switch's memory (name kept, so earlier checkpoints resume)."""


class BayesPFL(AnomalibModule):
    """Bayes-PFL: Bayesian prompt flow learning for zero-shot anomaly detection.

    Defaults are the paper's (:mod:`anomalib_bayes_pfl.defaults`); the torch model's arguments are forwarded by name.

    Args:
        backbone (str): open_clip ViT name, or the path of an open_clip model-config JSON file.
            Defaults to ``"ViT-L-14-336"``.
        pretrained (str | None): open_clip tag, local CLIP weights file (open_clip checkpoint or OpenAI ``.pt``),
            or ``None`` for random weights. Defaults to ``"openai"``.
        image_size (int): Input side; a multiple of the patch size. Defaults to ``518``.
        feature_layers (Sequence[int]): 1-indexed ViT blocks tapped for patch tokens. Defaults to ``(6, 12, 18, 24)``.
        activation (str): CLIP's MLP activation: ``"auto"`` (follows the weights), ``"gelu"`` (the reference's; needed
            with the authors' released heads) or ``"quick_gelu"``. Defaults to ``"auto"``.
        num_prompts, context_length, state_length (int): Prompt pairs in the bank, context and state vectors per
            prompt. Default to ``3``, ``5``, ``5``.
        num_flows (int): Planar flows per distribution. Defaults to ``10``.
        num_samples (int): Prompt samples per image at evaluation. Defaults to ``10``.
        eval_seed (int): Seed of the evaluation samples (fixed per model). Defaults to ``0``.
        class_name (str | None): Class name for the prompts; it always wins over a stored one. ``None``: the
            datamodule's category (per image for ``AuxiliaryTrain``), else the name stored with the weights (see
            :meth:`setup`). Defaults to ``None``.
        gaussian_sigma (float): Anomaly-map smoothing in pixels. Defaults to ``8``.
        score_alpha (float): Weight of the image branch in the image score. Defaults to ``0.5``.
        top_k (int): Largest (unsmoothed) map values averaged into the image score. Defaults to ``2000``.
        prompt_weights (str | None): Trained head (a checkpoint of this model, a file of ``save_prompt_weights`` or
            the authors' released head); switches to zero-shot mode. Defaults to ``None``.
        focal_gamma, kl_weight, orthogonal_weight (float): Focal exponent, weight of each KL term, weight of the
            orthogonality loss. Default to ``2``, ``0.01``, ``1``.
        lr, lr_prompt, lr_flow, lr_temperature (float): Learning rates of encoders/RCA/mappings, prompt bank, flows
            and temperatures. Default to ``1e-4``, ``1e-3``, ``1e-3``, ``1e-2``.
        betas (tuple[float, float]): Adam betas. Defaults to ``(0.5, 0.999)``.
        warmup_ratio (float): Share of stage-1 steps spent warming up before the cosine decay. Defaults to ``0.1``.
        stage_patience (int): Validation epochs without a source pixel AP at least as high as the best after which
            stage 1 ends (its best weights are restored) and stage 2 begins; then as many without a source image AP
            at least as high as stage 2's best, after which training stops (the reference's rules). Defaults to ``4``.
        stage1_max_epochs (int | None): Start stage 2 after this many epochs at the latest (``None``: patience only).
            Defaults to ``None``.
        seed (int | None): Seed of the head's initialisation, the training draws and the data order; ``None``: the
            seed of ``lightning.seed_everything`` if it ran, else 0 (anomalib's CLI ignores ``--seed_everything``,
            so ``--model.seed`` is how a CLI run is seeded). Defaults to ``None``.
        synthetic_anomalies (bool | None): Object-attention anomaly generation on normal training images (see
            ``synthesis.py``). ``None``: decided at the start of each fit, on exactly when the training split holds
            no anomalous image (e.g. MVTecAD's train split); ``True``: always; ``False``: never (a normal-only split
            is then refused). The checkpoint's hyper-parameters record the decision. Defaults to ``None``.
        synthesis_probability (float): Share of normal training images that get an anomaly. Defaults to ``0.5``.
        anomaly_source_path (str | None): Folder of texture images besides Perlin noise and the image itself.
            Defaults to ``None``.
        attention_layer (int | None): 1-indexed block whose class-token attention finds the object; ``None``: the
            middle block. Defaults to ``None``.
        meta_guidance (bool): Meta-guided prompt tuning (see ``meta_guidance.py``). Defaults to
            ``False``.
        meta_strength (float): lambda, the share of the conflicting gradient removed. Defaults to ``1``.
        locality_window (int | None): Locality-aware attention: odd window side in patches (see ``locality.py``);
            ``None`` disables it. Defaults to ``None``.
        locality_layers (Sequence[int] | None): Blocks with that window; ``None``: the last. Defaults to ``None``.
        k_shot (int): Few-shot mode (FEW_SHOT learning type; needs ``prompt_weights``): the patch tokens of this many
            normal reference images form a memory fused with the zero-shot map (see ``few_shot.py``); ``0``:
            zero-shot. Defaults to ``0``.
        few_shot_source (str | Sequence[str] | None): A folder (its first ``k_shot`` images in sorted order) or a
            list of image files; ``None``: the first ``k_shot`` normal images of the datamodule's train split, in
            dataset order. Defaults to ``None``.
        few_shot_weight (float): Weight of the memory in the map and score: ``0`` zero-shot only, ``1`` the memory
            only. Defaults to ``0.5``.
        false_alarm_rate (float | None): Thresholds from normal images only: the image (and pixel) threshold flags
            at most this share of normal images (pixels) that are like the validation split's normal images (split
            conformal, see ``calibration.py``); ``None``: anomalib's F1-adaptive thresholds. Defaults to ``None``.
        pre_processor, post_processor, evaluator, visualizer: As in :class:`AnomalibModule`.
    """

    def __init__(
        self,
        backbone: str = defaults.BACKBONE,
        pretrained: str | None = defaults.PRETRAINED,
        image_size: int = defaults.IMAGE_SIZE,
        feature_layers: Sequence[int] = defaults.FEATURE_LAYERS,
        activation: str = "auto",
        num_prompts: int = defaults.NUM_PROMPTS,
        context_length: int = defaults.CONTEXT_LENGTH,
        state_length: int = defaults.STATE_LENGTH,
        num_flows: int = defaults.NUM_FLOWS,
        num_samples: int = defaults.NUM_SAMPLES,
        eval_seed: int = 0,
        class_name: str | None = None,
        gaussian_sigma: float = defaults.GAUSSIAN_SIGMA,
        score_alpha: float = defaults.SCORE_ALPHA,
        top_k: int = defaults.TOP_K,
        prompt_weights: str | None = None,
        focal_gamma: float = defaults.FOCAL_GAMMA,
        kl_weight: float = defaults.KL_WEIGHT,
        orthogonal_weight: float = defaults.ORTHOGONAL_WEIGHT,
        lr: float = defaults.LR,
        lr_prompt: float = defaults.LR_PROMPT,
        lr_flow: float = defaults.LR_FLOW,
        lr_temperature: float = defaults.LR_TEMPERATURE,
        betas: tuple[float, float] = defaults.BETAS,
        warmup_ratio: float = defaults.WARMUP_RATIO,
        stage_patience: int = defaults.STAGE_PATIENCE,
        stage1_max_epochs: int | None = None,
        seed: int | None = None,
        synthetic_anomalies: bool | None = None,
        synthesis_probability: float = 0.5,
        anomaly_source_path: str | None = None,
        attention_layer: int | None = None,
        meta_guidance: bool = False,
        meta_strength: float = 1.0,
        locality_window: int | None = None,
        locality_layers: Sequence[int] | None = None,
        k_shot: int = 0,
        few_shot_source: str | Sequence[str] | None = None,
        few_shot_weight: float = 0.5,
        false_alarm_rate: float | None = None,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: ImageVisualizer | bool = True,
    ) -> None:
        self.zero_shot = prompt_weights is not None  # configure_evaluator reads it inside super().__init__()
        if pre_processor is True:
            if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
                msg = f"image_size={image_size!r} must be a positive multiple of the backbone's patch size."
                raise ValueError(msg)
            pre_processor = self.configure_pre_processor((image_size, image_size))
        super().__init__(pre_processor, post_processor, evaluator, visualizer)
        if false_alarm_rate is not None and getattr(self.post_processor, "false_alarm_rate", None) != false_alarm_rate:
            msg = (
                f"false_alarm_rate={false_alarm_rate} sets the thresholds of BayesPFL's own post-processor, and a "
                "post_processor was given: pass BayesPFLPostProcessor(false_alarm_rate=...) as post_processor, or "
                "drop one of the two."
            )
            raise ValueError(msg)
        training.check_schedule(warmup_ratio, stage_patience, stage1_max_epochs)
        self.attention_layer = attention_block(attention_layer, backbone)
        self.synthetic_anomalies = synthetic_anomalies  # the user's setting; on_fit_start decides for ``None``
        # ``None`` builds no generator before a fit decides: a validate or predict run of a fresh model scores its
        # images as they are (label-free validation would add anomalies to normal images that calibrate thresholds)
        self.synthesis = self._anomaly_generator() if synthetic_anomalies else None
        self.meta_guidance = MetaGuidance(meta_strength) if meta_guidance else None
        if prompt_weights is not None:  # name every setting the head needs before CLIP refuses one of them
            check_prompt_weights_settings(prompt_weights, self.hparams)
        with seeded(seed):
            self.model = BayesPFLModel(**{name: self.hparams[name] for name in MODEL_ARGUMENTS})
        if prompt_weights is not None:
            load_prompt_weights(self.model, prompt_weights)
        if check_few_shot_arguments(k_shot, few_shot_source, few_shot_weight, prompt_weights):
            self.model.add_few_shot_memory(k_shot, few_shot_weight)
        self.per_image_class_names = False  # chosen by setup from the datamodule
        self._label_free_validation = False  # decided at the start of each validation
        self._references_collected = False  # the few-shot memory is filled once, by the first setup with references
        self._resumed_from: str | None = None  # the checkpoint the last fit resumed from (on_train_start)
        self.loss = BayesPFLLoss(focal_gamma, kl_weight, orthogonal_weight)
        self.automatic_optimization = False  # two stages, two optimisers
        self.stage_switch = training.StageSwitch(stage_patience, stage1_max_epochs)

    @property
    def learning_type(self) -> LearningType:
        """FEW_SHOT with ``k_shot``, ZERO_SHOT with prompt weights (Engine.fit validates), else ONE_CLASS (trains)."""
        if self.model.few_shot is not None:
            return LearningType.FEW_SHOT
        return LearningType.ZERO_SHOT if self.zero_shot else LearningType.ONE_CLASS

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No overrides: epochs, devices and strategy stay the user's."""
        return {}

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Antialiased bicubic resize to the model's input size and CLIP's normalisation.

        The resize is exported with the model and computes the same there as in eager (see ``export.py``).
        """
        image_size = image_size or (defaults.IMAGE_SIZE, defaults.IMAGE_SIZE)
        transform = Compose(
            [
                Resize(image_size, interpolation=InterpolationMode.BICUBIC, antialias=True),
                Normalize(mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD),
            ],
        )
        return ExportablePreProcessor(transform=transform)

    def to_onnx(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        **kwargs: Any,  # noqa: ANN401  # passed on to torch.onnx.export
    ) -> Path:
        """Export to ONNX as anomalib does (also under ``to_openvino``), at the exporter's own opset by default.

        anomalib's default, opset 14, makes onnx's version converter log a traceback on every export (see
        ``export.py``); an ``opset_version`` given in ``onnx_kwargs`` still wins.
        """
        kwargs.setdefault("opset_version", ONNX_OPSET)
        return super().to_onnx(export_root, model_file_name, input_size, **kwargs)

    def configure_post_processor(self) -> PostProcessor:
        """The anomalib post-processor in both modes (the base class refuses one for zero-shot models).

        Ours says where its thresholds come from: no labels when none was learnt, a warning when it was learnt on
        other categories (see :mod:`anomalib_bayes_pfl.thresholds`); with ``false_alarm_rate`` they are calibrated on
        the normal validation images.
        """
        return BayesPFLPostProcessor(false_alarm_rate=self.hparams.get("false_alarm_rate"))

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
        """Image, ground-truth mask, anomaly map and the map over the image, side by side, with score and label under.

        Saved as ``images/<category>/<defect>/<file>``, so categories that share file names keep their pictures.
        """
        return CategoryImageVisualizer(
            fields=["image", "gt_mask", "anomaly_map"], overlay_fields=[("image", ["anomaly_map"])]
        )

    def configure_callbacks(self) -> Sequence[Callback]:
        """Metrics before post-processing; reports; in training, the best checkpoint by validation plus the last one.

        The evaluator (and the per-category metrics after it) runs before the post-processor, so metrics see the
        model's scores: normalisation clamps to [0, 1] with statistics of other images (or none, zero-shot), which
        ties scores and would change rank metrics. ``predict`` writes ``predictions.csv`` (:mod:`.reporting`); a
        ``validate`` without data (anomalib's zero-shot predict on a folder) runs no batch. The checkpoint callback
        is added only when the trainer checkpoints at all (``enable_checkpointing=False`` is honoured). Training
        checks first that the data has a validation split (:class:`ValidationSplitCheck`).
        """
        callbacks = [SkipValidationWithoutData(), *super().configure_callbacks(), PredictionTable()]
        if self.evaluator in callbacks and self.post_processor in callbacks:
            callbacks.remove(self.evaluator)
            callbacks.insert(callbacks.index(self.post_processor), self.evaluator)
        if self.evaluator in callbacks:
            callbacks.insert(callbacks.index(self.evaluator) + 1, CategoryMetrics(self.evaluator))
        if not self.zero_shot:
            callbacks.append(ValidationSplitCheck())
        checkpointing = self._trainer is not None and self.trainer.checkpoint_callback is not None
        if not self.zero_shot and checkpointing:
            callbacks.append(
                BestAndLastCheckpoint(
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
        rates = {name: self.hparams[name] for name in ("lr", "lr_prompt", "lr_flow", "lr_temperature")}
        stage1, stage2 = training.build_optimizers(self.model, betas=tuple(self.hparams.betas), **rates)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = LambdaLR(stage1, training.warmup_cosine(total, self.hparams.warmup_ratio))
        return [stage1, stage2], [{"scheduler": schedule, "interval": "step"}]

    def setup(self, stage: str) -> None:
        """Check ``--ckpt_path`` files before Lightning reads them; choose the class names of the prompts.

        One source serves every phase of the run (training, validation, test, predict, and export afterwards), first
        that applies:

        1. the ``class_name`` argument;
        2. each image's category folder, only for datamodules whose layout names categories
           (:class:`~anomalib_bayes_pfl.data.AuxiliaryTrain`, mixed categories);
        3. the datamodule's non-empty ``category`` (``MVTecAD``, ``Visa``, ``SafePredictFolder``), which becomes the
           model's class name, so an export after the run uses it too;
        4. the name stored with the loaded weights, else ``"object"``.

        Names from 1 and 3 are the user's: a checkpoint restored afterwards (``--ckpt_path``) keeps them. Paths are
        never read for other datamodules: the root folder of a stock ``Folder`` dataset is not a category.
        """
        del stage
        guard_checkpoint_loading(self)
        self._collect_few_shot_references()
        self.per_image_class_names = False
        if self.hparams.class_name is not None or self._trainer is None:
            return
        datamodule = self.trainer.datamodule
        if isinstance(datamodule, AuxiliaryTrain):
            self.per_image_class_names = True
            return
        category = getattr(datamodule, "category", None)
        if isinstance(category, str) and category.strip():
            self.model.set_class_name(category)

    def _collect_few_shot_references(self) -> None:
        """Fill the few-shot memory once: from ``few_shot_source``, else the datamodule's train split (see ``k_shot``).

        Without either the memory stays as it is: a checkpoint restored after ``setup`` may hold one; scoring with an
        empty memory is an error naming the fix.
        """
        if self.model.few_shot is None or self._references_collected:
            return
        source, k_shot = self.hparams.few_shot_source, self.hparams.k_shot
        if source is not None:
            images = read_references(reference_paths(source), k_shot, f"few_shot_source={source!r}")
        elif self._trainer is not None and getattr(self.trainer.datamodule, "train_data", None) is not None:
            paths = train_reference_paths(self.trainer.datamodule.train_data)
            images = read_references(paths, k_shot, "the datamodule's train split")
        else:
            return
        if self.pre_processor:
            images = self.pre_processor.transform(images)
        self.model.fill_few_shot_memory(images)
        self._references_collected = True

    def _anomaly_generator(self) -> ObjectAttentionAnomalyGenerator:
        """The synthetic-anomaly generator of this model's settings."""
        return ObjectAttentionAnomalyGenerator(
            self.hparams.synthesis_probability, anomaly_source_path=self.hparams.anomaly_source_path
        )

    def on_fit_start(self) -> None:
        """Decide whether this fit synthesises anomalies, before the sanity check validates with them.

        ``synthetic_anomalies=None`` synthesises exactly when some rank's training split holds no anomalous image,
        so every DDP rank decides alike (:func:`~anomalib_bayes_pfl.training.synthesise_anomalies`; ``False`` on
        such a split is refused with the fix). The decision is logged once and recorded as the hyper-parameter
        ``synthetic_anomalies``, so the checkpoint, and a model loaded from it, say how it was trained. A missing
        texture folder stops the fit here.
        """
        normal_only = training.holds_no_anomalies(self.trainer.datamodule)
        normal_only = self.trainer.strategy.reduce_boolean_decision(normal_only, all=False)
        synthesise = training.synthesise_anomalies(self.synthetic_anomalies, normal_only)
        if not synthesise:
            self.synthesis = None
        elif self.synthesis is None:  # ``None`` builds it only now (as after an earlier fit that did without)
            self.synthesis = self._anomaly_generator()
        self.hparams["synthetic_anomalies"] = synthesise
        if synthesise and self.synthetic_anomalies is None and self.trainer.is_global_zero:
            logger.info("Bayes-PFL: the training split holds no anomalous image; synthesising anomalies to train on.")
        if self.synthesis is not None:
            self.synthesis.check_sources()

    def on_train_start(self) -> None:
        """Note the checkpoint this fit resumes from, and seed torch's global generator (data order) from ``seed``.

        ``Engine.train`` tests with the resumed checkpoint again (see :meth:`on_load_checkpoint`).
        """
        self._resumed_from = self.trainer.ckpt_path
        seed_global_generator(self.hparams.seed)

    def _class_names(self, batch: Batch) -> list[str] | None:
        """Per-image class names from the category folders, where :meth:`setup` chose them; ``None``: the model's."""
        if not self.per_image_class_names or batch.image_path is None:
            return None
        return [category_from_path(path) or self.model.class_name for path in batch.image_path]

    def training_step(self, batch: Batch, *args, **kwargs) -> torch.Tensor:
        """One optimisation step of the current stage (with synthetic anomalies and meta guidance when enabled).

        Every random draw of the step (synthesis, prompt noise, the bank pair) comes from the run's seed and the
        step number, so DDP ranks agree and a resumed run draws what an uninterrupted one would. A non-finite loss
        on any rank stops training before the optimiser step (:func:`~anomalib_bayes_pfl.finite.check_finite_loss`).
        """
        del args, kwargs
        stage, seed = self.model.stage, run_seed(self.hparams.seed)
        generator = training.step_generator(seed, self.global_step)
        images, labels, masks = batch.image, batch.gt_label, batch.gt_mask
        if self.synthesis is not None:
            images, labels, masks = self.synthesis.training_batch(
                images, labels, masks, self.model.backbone, self.attention_layer, generator
            )
        class_names = self._class_names(batch)
        outputs = self.model(images, class_names, generator=generator)
        pair = training.choose_pair(self.model.prompt_bank.num_prompts, seed, self.global_step)
        terms = self.loss(outputs, labels, masks, pair, stage, self.model.backbone.grid_size)
        any_rank = self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(terms["loss"])), all=False)
        finite.check_finite_loss(terms, self.global_step, any_rank)
        optimizer = self.optimizers()[stage - 1]
        optimizer.zero_grad()
        if self.meta_guidance is not None and stage == 1:
            names = class_names or [self.model.class_name] * len(images)
            average = functools.partial(self.trainer.strategy.reduce, reduce_op="mean")
            parameters = self.model.prompt_parameters()
            terms |= self.meta_guidance.backward(
                terms["loss"], outputs, self.model.backbone, names, parameters, self.manual_backward, average
            )
        else:
            self.manual_backward(terms["loss"])
        optimizer.step()
        if stage == 1:
            self.lr_schedulers().step()
        self.log_dict({f"train_{name}": value.detach() for name, value in terms.items()}, sync_dist=True)
        self.log("train_stage", float(stage), sync_dist=True)
        return terms["loss"].detach()

    def on_validation_epoch_start(self) -> None:
        """Decide once per validation whether it is label-free (see :meth:`validation_step`), not once per batch."""
        self._label_free_validation = (
            self.synthesis is not None and not self.zero_shot and holds_normal_images_only(self.trainer)
        )

    def validation_step(self, batch: Batch, *args, **kwargs) -> Batch:
        """Score the batch; label-free, each normal image is scored again with a synthetic anomaly.

        Label-free means anomalies are synthesised and the validation split holds normal images only: the APs that
        select the checkpoint would be undefined (see :mod:`anomalib_bayes_pfl.validation`).
        """
        del args, kwargs
        if self._label_free_validation:
            with_synthetic_anomalies(batch, self.synthesis, self.model.backbone, self.attention_layer)
        return self._score(batch, uncertainty=False)  # nothing reads the uncertainty map at validation

    def test_step(self, batch: Batch, *args, **kwargs) -> Batch:
        """Score the batch, with its ``uncertainty_map`` (:mod:`~anomalib_bayes_pfl.uncertainty`) for the pictures."""
        del args, kwargs
        return self._score(batch, uncertainty=True)

    def _score(self, batch: Batch, uncertainty: bool) -> Batch:
        """Score the batch with per-image class names where the data layout gives them.

        Validation, test and predict take this one path. The evaluator and post-processor collect what they need
        from the returned batch; the uncertainty map, not a field of anomalib's batches, is an attribute. An image
        with NaN or Inf pixels is an error naming it (it has no score).
        """
        finite.check_finite_images(batch.image, batch.image_path)
        prediction = self.model(batch.image, self._class_names(batch), uncertainty=uncertainty)._asdict()
        if uncertainty:
            batch.uncertainty_map = prediction.pop("uncertainty_map")
        return batch.update(**prediction)

    predict_step = test_step

    exports_uncertainty = False
    """Whether :meth:`forward`, which export writes, adds ``uncertainty_map``; see :func:`uncertainty_output`."""

    def forward(self, batch: torch.Tensor, *args, **kwargs) -> InferenceBatch | UncertainInferenceBatch:
        """Run anomalib's pipeline; with ``exports_uncertainty``, add the uncertainty map as a fifth output.

        Export writes what this returns; anomalib's inferencers accept four outputs, so the fifth is opt-in
        (:func:`~anomalib_bayes_pfl.uncertainty.uncertainty_output`).
        """
        if not self.exports_uncertainty:
            return super().forward(batch, *args, **kwargs)
        return forward_with_uncertainty(self, batch)

    def on_validation_epoch_end(self) -> None:
        """Log the checkpoint-selection metric: the mean of the validation APs that could be computed.

        A split without masks has no pixel AP and is selected by image AP alone; a split with no anomalous image
        (and no synthetic anomalies) has neither, which is an error naming the fix.
        """
        if self.zero_shot or self.evaluator is None or self.trainer.sanity_checking or not self.evaluator.val_metrics:
            return
        value = selection_value([metric.compute() for metric in self.evaluator.val_metrics])
        if value is None:
            msg = (
                "Validation could compute no AP to select the checkpoint by: its images hold no anomaly. Validate on "
                "a split with anomalous images, or train with synthetic_anomalies=True to validate on synthetic "
                "anomalies of the held-out normal images."
            )
            raise ValueError(msg)
        self.log(SELECTION_METRIC, value, sync_dist=True)

    def on_train_epoch_end(self) -> None:
        """Advance the two-stage schedule from this epoch's validation (see :class:`StageSwitch`).

        The stop is Lightning's ``trainer.should_stop``: checkpoint callbacks run after this hook, so the epoch that
        stops is still checkpointed, and ``min_epochs`` is honoured. Epochs without validation
        (``check_val_every_n_epoch``) count for nothing: Lightning keeps showing the last validation's metrics.
        """
        validated = self.trainer.fit_loop.epoch_loop._should_check_val_epoch()  # noqa: SLF001 - Lightning's own rule
        metrics = self.trainer.callback_metrics if validated else {}
        pixel_ap, image_ap = (metrics.get(name) for name in (STAGE_METRIC, STOP_METRIC))
        event = self.stage_switch.end_of_epoch(
            self.model, self.current_epoch, *(None if ap is None else float(ap) for ap in (pixel_ap, image_ap))
        )
        if event == training.SWITCHED:
            logger.info("Bayes-PFL: stage 1 ended after epoch %d; training the image branch.", self.current_epoch)
        elif event == training.STOP:
            logger.info("Bayes-PFL: stage 2 stopped improving; training ends after epoch %d.", self.current_epoch)
            self.trainer.should_stop = True

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args: Any, **kwargs: Any) -> BayesPFL:  # noqa: ANN401
        """Anomalib's loader (``export``, Python), after checking the file is a BayesPFL checkpoint."""
        check_checkpoint_file(checkpoint_path)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the stage schedule's memory for resuming; leave the frozen CLIP out (it is rebuilt at load)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[STAGE_SWITCH_KEY] = self.stage_switch.state_dict()
        drop_frozen_clip(checkpoint, self.model.backbone, dict(self.hparams))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the stage schedule and put this model's CLIP back, if it is the one the head was trained on.

        Weights with NaN or Inf values are refused (they would score every image NaN, labelled normal); the
        post-processor's thresholds are NaN until computed, so only the model's own entries are checked.

        ``Engine.train(ckpt_path=...)`` tests with the file its fit resumed from, which would score the weights the
        fit started from; that test keeps the weights the fit ended with, as an uninterrupted run's test does.
        """
        if self._testing_the_resumed_file():
            checkpoint["state_dict"] = self.state_dict()
            return
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        finite.check_finite_weights({key: state[key] for key in state if key.startswith("model.")}, "This checkpoint")
        restore_frozen_clip(checkpoint, self.model.backbone)
        if STAGE_SWITCH_KEY in checkpoint:
            self.stage_switch.load_state_dict(validate_stage_switch_state(checkpoint[STAGE_SWITCH_KEY]))

    def _testing_the_resumed_file(self) -> bool:
        """Whether a test is loading the checkpoint that the fit run before it, in this process, resumed from."""
        resumed = self._resumed_from
        if self._trainer is None or not self.trainer.testing or not resumed or not self.trainer.ckpt_path:
            return False
        return Path(self.trainer.ckpt_path).resolve() == Path(resumed).resolve()
