"""trainer: the FSDP2 GRPO / FAST-GRPO / SFPO trainer (`torchrun -m trainer.main`)."""
