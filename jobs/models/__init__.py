"""Models built from torch.nn (no torchvision)."""
