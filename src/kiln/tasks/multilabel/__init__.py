"""task=multilabel (several labels per image) and task=binary (two classes, one logit): a sigmoid
per output, binary cross-entropy, thresholds chosen on the validation split."""

# isort: off
from kiln.tasks.multilabel.task import MultiLabelTask, SigmoidTask
from kiln.tasks.multilabel.binary import BinaryTask

# isort: on

__all__ = ["BinaryTask", "MultiLabelTask", "SigmoidTask"]
