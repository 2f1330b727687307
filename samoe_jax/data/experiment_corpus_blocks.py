"""The unit every converter of the experiment corpus yields (experiment_corpus_sources.py,
experiment_corpus_html.py): a heading, a prose paragraph or a code block."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Block:
  kind: str   # 'heading' | 'prose' | 'code'
  text: str
