"""Layer 1, the Ray runtime: starting or joining a cluster, free ports, memory sampling."""
