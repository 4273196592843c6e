"""Measuring masks: the test set in the object store, the scorer actor, and the images x masks cross product on Ray Data."""
