"""LAVIS integration: our models, tasks and dataset builders in LAVIS's registry, a DeepSpeed
runner for LAVIS task configs, and the compatibility layer that lets LAVIS 1.0.2 run here."""
