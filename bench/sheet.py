"""A contact sheet: frames of a video at regular times, side by side in one PNG, with their times."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def contact_sheet(video: str | Path, out: str | Path, every: float = 5.0, columns: int = 6, scale: int = 2) -> Path:
    """Every `every` seconds of `video`, one frame, enlarged `scale` times, `columns` to a row."""
    import av
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picked = []
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        step = max(1, round(every * fps))
        for n, frame in enumerate(container.decode(stream)):
            if n % step == 0:
                picked.append((n / fps, frame.to_ndarray(format="rgb24")))
    if not picked:
        raise ValueError(f"{video}: holds no frames")
    rows = -(-len(picked) // columns)
    height, width = picked[0][1].shape[:2]
    figure, axes = plt.subplots(rows, columns, figsize=(columns * width * scale / 100, rows * (height * scale + 24) / 100),
                                dpi=100, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (seconds, image) in zip(axes.flat, picked):
        axis.imshow(np.repeat(np.repeat(image, scale, 0), scale, 1), interpolation="nearest")
        axis.set_title(f"{seconds:.0f} s", fontsize=9)
    figure.tight_layout(pad=0.3)
    out = Path(out)
    figure.savefig(out)
    plt.close(figure)
    return out
