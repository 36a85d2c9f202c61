"""Stage 1: heat-map regression of organ centroids on a coarse (3 mm) grid, and boxes from them."""
