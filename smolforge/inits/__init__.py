"""Where a training run's model starts: one module per `train.<model>.init` value.

Each has `build(p, meta, tokens_dir, longest, rank)` and `save(model, folder)`. Stage
train imports only the one its params name, and dvc.yaml's train@<model> depends on that
file alone, so editing the LoRA code never reruns the training of a scratch model.
"""
