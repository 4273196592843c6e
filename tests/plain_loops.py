"""What the evaluator must count, done the obvious way in-process: the references the Ray tests compare against."""

from __future__ import annotations

import torch

from maskcrypt.masks import overlay


def open_set_reference(models, ts, mask):
    """Open-set counts the obvious way: centroids of the gallery (masked for E, clean for O), top-1 cosine."""
    import torch.nn.functional as F

    x, y, g = torch.from_numpy(ts.images), torch.from_numpy(ts.labels), torch.from_numpy(ts.gallery)
    masked = overlay(x, torch.from_numpy(mask))
    out = {}
    with torch.inference_mode():
        for name, model in models.items():
            gal = (x if name == "O" else masked)[g]
            emb = F.normalize(model.embed(gal), dim=1)
            cent = F.normalize(torch.zeros(len(ts.classes), emb.shape[1]).index_add_(0, y[g], emb), dim=1)
            probe = F.normalize(model.embed(masked[~g]), dim=1)
            hit = (probe @ cent.T).argmax(1) == y[~g]
            split = torch.from_numpy(ts.split[~ts.gallery])
            out[name] = {s: int(hit[split == k].sum()) for k, s in enumerate(["selection", "confirmation"])}
    return out
