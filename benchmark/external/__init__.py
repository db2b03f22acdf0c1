"""Outside methods on the board: the folds as a file, imported predictions, nnU-Net v2 through its code."""
