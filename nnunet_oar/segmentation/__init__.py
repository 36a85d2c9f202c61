"""Stage 2: per-organ ROI data sets (``crops``), their nnU-Net planning (``planning``), the organ networks
on crops at inference (``predict``) and the max-probability merge of their probabilities (``merge``)."""
