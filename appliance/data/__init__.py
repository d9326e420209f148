"""Plant data on the box: JSON Lines records, held-out split, token windows for training."""
