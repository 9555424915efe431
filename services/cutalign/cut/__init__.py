"""Contrastive Unlikelihood Training: the loss, the data path from judgments to batches, and the trainer."""
