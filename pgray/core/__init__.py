"""The method in plain PyTorch: never imports Ray, MLflow or Optuna (a test walks its AST).

- `model`: PatchGuard (timm ViT + attention discriminator), image scores and pixel maps.
- `losses`: patch BCE + the attention-degree regulariser.
- `step`: one adversarial training step and one epoch.
- `fit`: the training loop of one category (in-process or inside a Ray Train worker).
- `training_data`: train pairs, the held-out proxy set and their loaders.
- `scoring`: scoring a split clean or under attack; the held-out proxy.
- `metrics`: image AUROC, pixel AUROC, AUPRO.
- `checkpoint`: self-describing checkpoints, loaded with weights_only=True.
- `device`: the one device choice and precision (autocast) rule.
"""
