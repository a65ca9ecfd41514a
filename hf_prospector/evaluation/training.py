"""Fine-tune a fresh copy of the base model on one arm, with TRL's ``SFTTrainer``.

Why TRL: it is the field's SFT library and takes prompt-completion data already tokenized (``input_ids`` plus a
``completion_mask``), building labels of -100 outside the completion when ``completion_only_loss=True``. Handing
it the library's exact ids (:mod:`.data`) keeps the prompt rendered, and the response tokenized, exactly as the
scorer saw them; TRL's own tokenization of prompt + completion text would tokenize across the boundary and add an
EOS the scorer never scores. Checked with TRL 1.16 on transformers 5.24, CPU. LoRA (peft) is an option for larger
bases; small ones are fully fine-tuned.
"""

from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # datasets loads when an arm trains, so a recipe can name TrainSettings without it
    from datasets import Dataset

INSTALL_HINT = "pip install 'hf_prospector[evidence]'   (or: pip install trl peft)"


def require(*modules: str) -> None:
    """Fail up front, with the install command, when an optional dependency is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"fine-tuning arms needs {', '.join(missing)}: {INSTALL_HINT}")


@dataclass(frozen=True)
class TrainSettings:
    """Identical for every arm. ``steps`` (optimizer steps) overrides ``epochs`` when given; ``lora`` (e.g.
    ``{"r": 16, "alpha": 32}``) trains adapters, merged before evaluation, instead of every weight."""

    epochs: float = 1.0
    steps: int | None = None
    learning_rate: float = 2e-5
    batch_size: int = 8
    gradient_accumulation: int = 1
    lr_scheduler: str = "linear"
    warmup: float = 0.0  # a fraction of the steps below 1, else a number of steps
    weight_decay: float = 0.0
    seed: int = 0
    bf16: bool = False
    # TRL's default is on (less memory, a third more compute): off suits the small bases a CPU tunes.
    gradient_checkpointing: bool = False
    lora: dict | None = field(default=None)

    def to_dict(self) -> dict:
        return asdict(self)


def make_trainer(model, tokenizer, train: Dataset, settings: TrainSettings, output_dir: str, device: str = "cpu"):
    """An ``SFTTrainer`` for ``train`` (``input_ids`` and ``completion_mask``) with completion-only loss."""
    require("trl", *(["peft"] if settings.lora else []))
    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(
        output_dir=output_dir, num_train_epochs=settings.epochs, max_steps=settings.steps or -1,
        per_device_train_batch_size=settings.batch_size, gradient_accumulation_steps=settings.gradient_accumulation,
        learning_rate=settings.learning_rate, lr_scheduler_type=settings.lr_scheduler,
        **_warmup(settings.warmup, SFTConfig), weight_decay=settings.weight_decay, seed=settings.seed,
        data_seed=settings.seed, bf16=settings.bf16, gradient_checkpointing=settings.gradient_checkpointing,
        completion_only_loss=True, max_length=None,
        report_to=[], save_strategy="no", logging_steps=10, disable_tqdm=True, use_cpu=device == "cpu",
        dataloader_num_workers=0)
    peft_config = None
    if settings.lora:
        from peft import LoraConfig

        lora = dict(settings.lora)
        peft_config = LoraConfig(r=lora.pop("r", 16), lora_alpha=lora.pop("alpha", 32),
                                 lora_dropout=lora.pop("dropout", 0.0),
                                 target_modules=lora.pop("target_modules", "all-linear"), task_type="CAUSAL_LM", **lora)
    return SFTTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer, peft_config=peft_config)


def _warmup(warmup: float, config_class) -> dict:
    """transformers 5 reads a fraction from ``warmup_steps``; 4.x has ``warmup_ratio`` for that."""
    if 0 < warmup < 1 and "warmup_ratio" in getattr(config_class, "__dataclass_fields__", {}):
        return {"warmup_ratio": warmup}
    return {"warmup_steps": warmup if 0 < warmup < 1 else int(warmup)}


def fine_tune(model, tokenizer, train: Dataset, settings: TrainSettings, device: str = "cpu"):
    """``model`` trained on ``train``; returns ``(model, log)`` with the trainer's log history. LoRA adapters are
    merged, so the result is a plain model of the base's architecture."""
    model.train()
    with tempfile.TemporaryDirectory(prefix="hf_prospector_sft_") as out:
        trainer = make_trainer(model, tokenizer, train, settings, out, device)
        trainer.train()
        tuned = trainer.model
    if settings.lora:
        tuned = tuned.merge_and_unload()
    return tuned.eval(), trainer.state.log_history
