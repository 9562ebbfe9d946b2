"""A contact sheet of a prepared dataset: one row per modality, a few images each,
titled with the (shortened) question, options and answer."""
from __future__ import annotations

import textwrap
from collections import defaultdict

from learner.image_codec import decode_image
from pipelines.data.schema import LETTERS, MODALITIES, VQARecord
from pipelines.figures import plt, save_figure


def _title(rec: VQARecord, width: int = 30) -> str:
    q = textwrap.shorten(rec.question, width=2 * width, placeholder="...")
    opts = " ".join(f"{LETTERS[i]}){o}" for i, o in enumerate(rec.options))
    opts = textwrap.shorten(opts, width=2 * width, placeholder="...")
    answer = f"answer {rec.answer}: {rec.options[LETTERS.index(rec.answer)]}"
    return "\n".join(textwrap.wrap(q, width) + textwrap.wrap(opts, width) + [textwrap.shorten(answer, width)])


def write_preview(records: list[VQARecord], path: str, per_row: int = 6) -> str:
    """Write a PNG contact sheet to ``path``: for each modality, up to ``per_row`` records,
    one per question type first (round-robin), so the rows show every kind of question."""
    by_mod: dict[str, dict[str, list[VQARecord]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_mod[r.modality][r.question_type].append(r)
    mods = [m for m in MODALITIES if m in by_mod] + sorted(m for m in by_mod if m not in MODALITIES)
    rows = []
    for m in mods:
        queues = [list(v) for _, v in sorted(by_mod[m].items())]
        picked: list[VQARecord] = []
        while len(picked) < per_row and any(queues):
            for q in queues:
                if q and len(picked) < per_row:
                    picked.append(q.pop(0))
        rows.append((m, picked))
    n_rows = max(1, len(rows))
    fig, axes = plt.subplots(n_rows, per_row, figsize=(per_row * 2.6, n_rows * 3.3), squeeze=False)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.01, top=1 - 0.7 / (n_rows * 3.3), wspace=0.08, hspace=0.45)
    for ax in axes.flat:
        ax.set_axis_off()
    for ri, (m, picked) in enumerate(rows):
        for ci, rec in enumerate(picked):
            ax = axes[ri][ci]
            if isinstance(rec.image, (bytes, bytearray)) and rec.image:
                ax.imshow(decode_image(rec.image))
            else:
                ax.text(0.5, 0.5, "image missing", ha="center", va="center", fontsize=8)
            ax.set_title(_title(rec), fontsize=6.5, loc="left")
        axes[ri][0].text(-0.08, 0.5, m, transform=axes[ri][0].transAxes, rotation=90, ha="right", va="center",
                         fontsize=10, weight="bold")
    save_figure(fig, path, dpi=90, tight=False)
    return path
