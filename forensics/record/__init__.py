"""Recording: the online detector, the ring buffer and the recorder that rides in training."""
