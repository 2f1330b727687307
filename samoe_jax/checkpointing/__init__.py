"""The checkpoint store of a run's workdir: orbax saves and restores (store.py), their checksums and fallback to
the newest intact checkpoint (integrity.py), and what changed between a workdir's saved config and a rerun's
(resume_config.py). Below evaluation/ (which loads checkpoints) and training/ (which writes them)."""
