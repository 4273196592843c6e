"""Training the three models on Ray Train: the driver (:mod:`.driver`), the worker loop (:mod:`.loop`),
the training report (:mod:`.report`)."""
