"""Shadow mode: a candidate policy set deciding sampled requests off the request path."""
