"""task=segment: a class for every pixel or voxel (Dice + cross-entropy, mean IoU)."""

from kiln.tasks.segment.task import SegmentTask, dice_loss

__all__ = ["SegmentTask", "dice_loss"]
