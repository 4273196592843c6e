"""Measuring masks: the test set in the object store, the scorer actor, the images x masks cross product on Ray."""
