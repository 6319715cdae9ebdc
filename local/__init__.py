"""EmoReason: the shared package of the recipes (data, reasoning targets, models, training, evaluation)."""
