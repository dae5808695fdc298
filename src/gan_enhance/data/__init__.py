"""Image sources, safe image I/O, degradations, training batches and the prepare stage."""
