"""Task names (as in lm-evaluation-harness 0.4.13) and where each task's data lives.

Evaluation data (README paragraph)
----------------------------------
Nothing is downloaded at run time; tests/fixtures/eval ships a few documents of every task in this layout. Each
task reads JSON-lines files with the Hugging Face hub dataset's own field names from
`<data_dir>/<task>/<split>.jsonl`, so a split exported unchanged from the hub drops in. On a machine with internet
access, `python -m samoe_jax.evaluation.fetch_data --out=DATA_DIR` downloads every downloadable task from pinned
revisions (evaluation/data_sources.py) into this layout; or, with the `datasets` library, for each row run

    datasets.load_dataset(DATASET, CONFIG, split=SPLIT).to_json(f'{data_dir}/{TASK}/{SPLIT}.jsonl')

(`CONFIG` omitted where it is `-`). The evaluated split is needed always; the few-shot split only for
num_fewshot > 0. Files may keep every field of the hub rows; only the fields a task reads are checked.

| task            | DATASET                      | CONFIG        | evaluated split | few-shot split |
|-----------------|------------------------------|---------------|-----------------|----------------|
| lambada_openai  | EleutherAI/lambada_openai    | default       | test            | test           |
| piqa            | baber/piqa                   | -             | validation      | train          |
| boolq           | aps/super_glue               | boolq         | validation      | train          |
| race            | EleutherAI/race              | high          | test            | test           |
| triviaqa        | mandarjoshi/trivia_qa        | rc.nocontext  | validation      | train          |
| webqs           | stanfordnlp/web_questions    | -             | test            | (none: 0-shot) |
| hellaswag       | Rowan/hellaswag              | -             | validation      | train          |
| winogrande      | allenai/winogrande           | winogrande_xl | validation      | train          |
| arc_easy        | allenai/ai2_arc              | ARC-Easy      | test            | train          |
| arc_challenge   | allenai/ai2_arc              | ARC-Challenge | test            | train          |
| storycloze      | LSDSem/story_cloze           | 2016          | test            | validation     |
| openbookqa      | allenai/openbookqa           | main          | test            | train          |
| copa            | aps/super_glue               | copa          | validation      | train          |

`race` is RACE-h (the `high` subset; EleutherAI's copy groups the questions by article and has only a test
split). StoryCloze 2016 is not downloadable: request it from the authors (https://cs.rochester.edu/nlp/rocstories/);
its two CSV files `cloze_test_val__spring2016 - cloze_test_ALL_val.csv` (-> validation.jsonl) and
`cloze_test_test__spring2016 - cloze_test_ALL_test.csv` (-> test.jsonl) have a header and 8 columns per row, which
the hub loader names story_id, input_sentence_1 .. input_sentence_4, sentence_quiz1, sentence_quiz2 and
answer_right_ending (an integer, 1 or 2): write each row as a JSON object with those keys (read the CSV with
`csv.reader(f, skipinitialspace=True)`, as the loader does). The harness calls StoryCloze `storycloze_2016`; here it
is `storycloze`. Example layout: `data/eval/piqa/validation.jsonl`, `data/eval/piqa/train.jsonl`,
`data/eval/lambada_openai/test.jsonl`.
"""

from __future__ import annotations

import os

from samoe_jax.evaluation.tasks.base import Task
from samoe_jax.evaluation.tasks.generation import TriviaQA
from samoe_jax.evaluation.tasks.lambada import LambadaOpenAI
from samoe_jax.evaluation.tasks.multiple_choice import (ArcChallenge, ArcEasy, BoolQ, Copa, HellaSwag, OpenBookQA,
                                                        Piqa, Race, StoryCloze, WebQs, WinoGrande)

TASK_CLASSES: dict[str, type[Task]] = {
    cls.name: cls for cls in (LambadaOpenAI, Piqa, BoolQ, Race, TriviaQA, WebQs, HellaSwag, WinoGrande, ArcEasy,
                              ArcChallenge, StoryCloze, OpenBookQA, Copa)
}
TASK_NAMES: tuple[str, ...] = tuple(TASK_CLASSES)
# The harness's own task name where it differs from ours.
HARNESS_NAMES: dict[str, str] = {name: ('storycloze_2016' if name == 'storycloze' else name) for name in TASK_NAMES}


def get_task(name: str, data_dir: str | os.PathLike) -> Task:
  """The task `name` reading `<data_dir>/<name>/<split>.jsonl` (files are read on first use)."""
  if name not in TASK_CLASSES:
    raise ValueError(f'unknown evaluation task {name!r}: use one of {", ".join(TASK_NAMES)}')
  if not isinstance(data_dir, (str, os.PathLike)) or not os.fspath(data_dir):
    raise ValueError(f'data_dir={data_dir!r}: give the directory holding <task>/<split>.jsonl files')
  return TASK_CLASSES[name](os.fspath(data_dir))
