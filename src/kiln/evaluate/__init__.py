"""Task-free primitives for looking at runs: plot helpers (plots.py), pictures as files
(images.py), the self-contained HTML report page (report.py) and `kiln compare` (compare.py).
Nothing here knows which task a run is: the tasks (kiln/tasks/) call these."""
