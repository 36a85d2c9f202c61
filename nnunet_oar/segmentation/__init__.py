"""Stage 2: per-organ ROI data sets, their nnU-Net planning, and prediction on crops."""
