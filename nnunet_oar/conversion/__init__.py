"""Source data sets (VISCERAL, OpenKBP) -> nnU-Net raw data sets."""
